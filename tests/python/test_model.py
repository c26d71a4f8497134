"""The CPU engine against llama.cpp on the same GGUF: next-token logits,
greedy continuations and perplexity (issue acceptance criteria)."""
import numpy as np
import pytest

from conftest import LICENSE_TEXTS, QUANTIZED_DIR, llama_reference, run_attnserve_json

N_POSITIONS = 600
GREEDY_TOKENS = 32
PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village,",
    "def fibonacci(n):",
    "The three primary colors are",
    "Water boils at a temperature of",
    "In 1969, the first humans",
    "A good way to learn a new language is",
    "The quick brown fox",
    "Photosynthesis is the process by which",
    "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nName a fruit that is yellow.<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nTell me a joke.<|im_end|>\n<|im_start|>assistant\n",
    "The largest planet in our solar system is",
    "import numpy as np\nx = np.",
    "Dear Sir or Madam,",
    "1, 2, 3, 4, 5,",
    "The history of the Roman Empire",
    "To make a cup of tea, first",
    "Machine learning is",
    "Le chat est",
]


def _score(attnserve_bin, model, text_file, n_tokens, tmp_path):
    logits_file = tmp_path / "logits.f32"
    result = run_attnserve_json(attnserve_bin, "score", "--model", model, "--text-file", text_file,
                                "--max-text-tokens", n_tokens, "--threads", 2, "--dump-logits", logits_file)
    ids = result["token_ids"]
    logits = np.fromfile(logits_file, dtype=np.float32).reshape(len(ids), -1)
    return result, ids, logits


def _reference_logits(llm, ids):
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def _perplexity(logits, ids):
    logits = logits.astype(np.float64)
    lse = np.log(np.exp(logits - logits.max(axis=1, keepdims=True)).sum(axis=1)) + logits.max(axis=1)
    logprobs = logits[np.arange(len(ids) - 1), ids[1:]] - lse[:-1]
    return float(np.exp(-logprobs.mean()))


@pytest.fixture(scope="module")
def reference(model_path):
    return llama_reference(model_path)


def test_logits_match_llama_cpp(attnserve_bin, model_path, reference, tmp_path):
    result, ids, ours = _score(attnserve_bin, model_path, LICENSE_TEXTS[0], N_POSITIONS, tmp_path)
    assert len(ids) == N_POSITIONS
    theirs = _reference_logits(reference, ids)
    agree = float(np.mean(ours.argmax(axis=1) == theirs.argmax(axis=1)))
    max_delta = float(np.abs(ours - theirs).max())
    ppl_ours, ppl_theirs = _perplexity(ours, ids), _perplexity(theirs, ids)
    print(f"\ntop-1 agreement {agree:.4f} over {len(ids)} positions; max |dlogit| {max_delta:.4f}; "
          f"perplexity attnserve {ppl_ours:.4f} llama.cpp {ppl_theirs:.4f}")
    assert agree >= 0.99
    assert abs(result["perplexity"] - ppl_ours) / ppl_ours < 1e-3  # the CLI's own figure agrees
    assert abs(ppl_ours - ppl_theirs) / ppl_theirs < 0.01


def test_perplexity_on_a_second_text(attnserve_bin, model_path, reference, tmp_path):
    result, ids, ours = _score(attnserve_bin, model_path, LICENSE_TEXTS[1], 1500, tmp_path)
    ppl_theirs = _perplexity(_reference_logits(reference, ids), ids)
    print(f"\nGPL-3 ({len(ids)} tokens): perplexity attnserve {result['perplexity']:.4f} llama.cpp {ppl_theirs:.4f}")
    assert abs(result["perplexity"] - ppl_theirs) / ppl_theirs < 0.01


def _greedy_reference(llm, prompt_ids, n):
    llm.reset()
    llm.eval(prompt_ids)
    out, margins = [], []
    for _ in range(n):
        row = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        top2 = np.sort(row)[-2:]
        margins.append(float(top2[1] - top2[0]))
        tok = int(row.argmax())
        out.append(tok)
        llm.eval([tok])
    return out, margins


def test_greedy_continuations_match(attnserve_bin, model_path, reference):
    identical, report = 0, []
    for prompt in PROMPTS:
        ours = run_attnserve_json(attnserve_bin, "generate", "--model", model_path, "--prompt", prompt,
                                  "--max-tokens", GREEDY_TOKENS, "--temperature", 0, "--ignore-eos", "--threads", 2)
        theirs, margins = _greedy_reference(reference, ours["prompt_token_ids"], GREEDY_TOKENS)
        if ours["token_ids"] == theirs:
            identical += 1
            continue
        first = next(i for i, (a, b) in enumerate(zip(ours["token_ids"], theirs)) if a != b)
        report.append(f"{prompt!r}: diverges at token {first}, llama.cpp top-2 margin {margins[first]:.4f}")
    print(f"\n{identical}/{len(PROMPTS)} greedy continuations identical")
    for line in report:
        print("  " + line)
    assert identical >= 18
    # A divergence is acceptable only at a near-tie of the reference.
    for line in report:
        assert float(line.rsplit(" ", 1)[1]) < 0.5, line


QUANT_TYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q6_K"]


@pytest.mark.parametrize("qtype", QUANT_TYPES)
def test_every_weight_type_matches_llama_cpp(attnserve_bin, qtype, tmp_path):
    path = QUANTIZED_DIR / f"SmolLM2-135M-Instruct.{qtype}.gguf"
    if not path.exists():
        pytest.fail(f"{path} is missing: run tests/python/make_quantized_models.py")
    _, ids, ours = _score(attnserve_bin, path, LICENSE_TEXTS[2], 256, tmp_path)
    llm = llama_reference(path, n_ctx=512)
    theirs = _reference_logits(llm, ids)
    agree = float(np.mean(ours.argmax(axis=1) == theirs.argmax(axis=1)))
    ppl_ours, ppl_theirs = _perplexity(ours, ids), _perplexity(theirs, ids)
    print(f"\n{qtype}: top-1 agreement {agree:.4f}, max |dlogit| {np.abs(ours - theirs).max():.4f}, "
          f"perplexity {ppl_ours:.4f} vs {ppl_theirs:.4f}")
    assert agree >= 0.97
    assert abs(ppl_ours - ppl_theirs) / ppl_theirs < 0.02
