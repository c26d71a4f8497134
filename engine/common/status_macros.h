// Early-return helpers for absl::Status / absl::StatusOr.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define ATTN_STATUS_CONCAT_INNER(a, b) a##b
#define ATTN_STATUS_CONCAT(a, b) ATTN_STATUS_CONCAT_INNER(a, b)

// Returns the status of `expr` from the enclosing function when it is not OK.
#define ATTN_RETURN_IF_ERROR(expr)                    \
  do {                                                \
    if (::absl::Status _status = (expr); !_status.ok()) return _status; \
  } while (0)

// `lhs = *expr` for a StatusOr expression, or returns its error.
#define ATTN_ASSIGN_OR_RETURN(lhs, expr) \
  ATTN_ASSIGN_OR_RETURN_IMPL(ATTN_STATUS_CONCAT(_status_or_, __LINE__), lhs, expr)
#define ATTN_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                               \
  if (!tmp.ok()) return tmp.status();              \
  lhs = std::move(*tmp)
