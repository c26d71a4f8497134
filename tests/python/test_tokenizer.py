"""The tokenizer against llama.cpp (llama-cpp-python, vocab only) on the
default model, token for token, and the chat templates against Jinja2."""
import json
import random
import subprocess

import pytest

from conftest import run_attnserve

SPECIALS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<repo_name>", "<file_sep>", "<jupyter_code>"]

# Codepoints past U+10FFFF make llama.cpp abort (std::invalid_argument), so
# random bytes never contain them; attnserve treats them as invalid bytes.
BEYOND_UNICODE = [b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80", b"a\xf7\xbf\xbf\xbfb"]


def corpus():
    """Tricky texts as bytes: at least 200, deterministic."""
    texts = [
        "", " ", "  ", "a", "Hello world", "Hello, world!", " leading space", "trailing space ", "  both  ",
        "The quick brown fox jumps over the lazy dog.",
        "It was the best of times, it was the worst of times; it was the age of wisdom...",
        "Mr. O'Neil's dog doesn't bark -- it *sings*. (Really?) [Yes!] {ok} <tag> @user #hash $5 %20 ^_^ ~tilde~ `code`",
        "Email: someone@example.com, URL: https://example.org/path?q=1&r=two#frag",
        "def f(x):\n    return x ** 2  # square\n\nprint(f(3))\n",
        "for (int i = 0; i < n; ++i) {\n\tsum += a[i] * b[i];\n}\n",
        '{"key": [1, 2.5, -3e10, true, null], "nested": {"a": "b"}}',
        "<html><body class=\"x\"><p>Hi &amp; bye</p></body></html>",
        "SELECT name, COUNT(*) FROM users WHERE age >= 18 GROUP BY name;",
        "x=1;y=2;z=x+y", "a_b-c.d/e\\f|g", "!!!???...,,,;;;:::", "----====____****",
        "#include <vector>\nint main() { return 0; }", "    indented\n        more\n\tTabbed",
        "3.14159", "1,000,000", "-42", "+7", "0x1F", "1e-9", "555-0123", "2024-01-31T12:34:56Z", "v1.2.3",
        "12:30pm", "99%", "$1,234.56", "1/2 + 3/4 = 5/4", "a1b2c3", "abc123def456", "１２３", "٣٤٥", "४२",
        "²³¹", "½ ¼ ¾", "Ⅻ ⅻ", "it's", "don't", "we're", "I've", "I'm", "we'll", "he'd", "IT'S", "DON'T",
        "We'RE", "'s", "'t", "''s", "'ll'll", "rock'n'roll", "y'all'd've", "'", "' s", "'S", "'Ll",
        "😀", "😀😀😀", "👍🏽", "👋🏿 hi", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇫🇷🇩🇪", "1️⃣", "❤️", "🤷🏻‍♀️",
        "text 🙂 with 🎉 emoji 🚀!", "日本語のテキスト", "中文字符和标点。", "한국어 문장입니다", "カタカナ ひらがな 漢字",
        "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया", "हिन्दी में लिखा गया पाठ।", "สวัสดีชาวโลก", "Ελληνικά γράμματα",
        "Привет, мир! Ёжик.", "Zürich straße ÄÖÜ äöü ß", "façade naïve coöperate résumé", "Ꭰ Ᏸ", "ǅ ǈ ǋ",
        "e\u0301", "a\u0308\u0304", "n\u0303o\u0303", "Z\u0351\u0352\u0353a\u0354l\u0355g\u0356o", "\u0301alone",
        "ﬁ ﬂ ﬀ", "Ａｂｃ", "\u00a0nbsp\u00a0", "ideographic\u3000space", "nel\u0085line", "line\u2028sep\u2029para",
        "thin\u2009space", "zero\u200bwidth", "joiner\u200dx", "soft\u00adhyphen", "\ufeffbom", "rtl\u200fmark",
        "mongolian\u180evs", "\u0378unassigned", "private\ue000use", "nonchar\uffff", "\ufffd replacement",
        "\x00nul", "ctrl\x01\x02\x1f", "del\x7f", "c1\u0080\u009f", "\x1c\x1d\x1e\x1f sep", "vt\x0bff\x0c",
        "\n", "\n\n", "\r\n", "\r\n\r\n", "\t", "\t\t\t", " \n ", "\n \n", "a\n\nb", "a \n b", "a\t\tb",
        "     five", "ten        ", "mix \t \n \r\n\t  end", "\u00a0\u00a0x", "\u3000\u3000", "\n\u00a0\n",
        " " * 100, "\t" * 33, "\n" * 17, " \t" * 20 + "x", "a" + " " * 50 + "b", "x \n" * 10,
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "supercalifragilisticexpialidocious antidisestablishmentarianism",
        "<|im_start|>user\nhi<|im_end|>\n", "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|><|im_end|>", "<|im_start|>|>", "<<|im_end|>>", "<|im_start", "im_start|>", "<|endoftext|>x",
        "text<|endoftext|>more<|endoftext|>", " <|im_end|> ", "<repo_name>r<file_sep>f<jupyter_code>c",
        "<|im_start|>user\n日本語 😀<|im_end|>", "<|im_end|>\n\n<|im_start|>", "<|IM_START|>", "<| im_start |>",
    ]
    texts += [str(n) for n in (0, 7, 42, 123, 1234, 12345, 123456, 1234567, 98765432109876543210)]
    texts += ["1" * n for n in range(1, 12)]
    texts += [f"{n} apples and {n * 7} pears" for n in (3, 17, 256, 4096)]
    out = [t.encode("utf-8") for t in texts]
    out += [
        b"\xff", b"\x80", b"\xfe\xff", b"a\x80b", b"\xc0\x80", b"\xc1\xbf", b"\xe0\x80\x80", b"\xed\xa0\x80",
        b"\xed\xbf\xbf", b"\xe2\x82", b"\xe2\x82\xac", b"abc\xf0\x9f\x98", b"\xf0\x9f\x98\x80\x80",
        b"\xf8\x88\x80\x80\x80", b"\xfc\x84\x80\x80\x80\x80", b"caf\xe9", b"\xc3", b"\xc3(", b"\xa0\xa1",
        b"<|im_start|>\xff<|im_end|>", b"\xe2<|im_end|>\x82\xac", b" \xff ", b"12\xff34", b"\xf0\x90\x80\x80",
    ]
    rng = random.Random(1234)
    alphabet = [t for t in texts if 0 < len(t) < 40]
    for _ in range(60):
        out.append("".join(rng.choice(alphabet) for _ in range(rng.randint(2, 6))).encode("utf-8"))
    for _ in range(40):
        raw = bytes(rng.randrange(256) for _ in range(rng.randint(1, 24)))
        if not any(b in raw for b in (b"\xf4", b"\xf5", b"\xf6", b"\xf7")):
            out.append(raw)
    return out


def as_json(text):
    try:
        return text.decode("utf-8")
    except UnicodeDecodeError:
        return list(text)


def is_utf8(text):
    try:
        text.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


@pytest.fixture(scope="module")
def vocab(model_path):
    from llama_cpp import Llama

    return Llama(model_path=str(model_path), vocab_only=True, verbose=False)


def piece(vocab, token):
    """llama.cpp's bytes for one token, special tokens rendered. (Llama.detokenize
    gives b"" for pieces over 32 bytes, such as long runs of spaces.)"""
    import ctypes

    import llama_cpp

    buffer = (ctypes.c_char * 1024)()
    n = llama_cpp.llama_token_to_piece(llama_cpp.llama_model_get_vocab(vocab.model), token, buffer, 1024, 0, True)
    assert 0 <= n <= 1024
    return bytes(buffer[:n])


def tokenize(binary, model_path, tmp_path, texts, *flags):
    strings = tmp_path / "strings.json"
    strings.write_text(json.dumps([as_json(t) for t in texts]))
    return json.loads(run_attnserve(binary, "tokenize", "--model", model_path, "--strings-file", strings, *flags))


@pytest.mark.parametrize("parse_special", [False, True])
def test_ids_match_llama_cpp(attnserve_bin, model_path, vocab, tmp_path, parse_special):
    texts = corpus()
    assert len(texts) >= 200
    flags = ["--add-special"] + (["--parse-special"] if parse_special else [])
    results = tokenize(attnserve_bin, model_path, tmp_path, texts, *flags)
    mismatches = []
    for text, got in zip(texts, results):
        want = vocab.tokenize(text, add_bos=True, special=parse_special)
        if got["ids"] != want:
            mismatches.append(f"{text!r}: attnserve {got['ids']} llama.cpp {want}")
    assert not mismatches, f"{len(mismatches)} of {len(texts)} differ:\n" + "\n".join(mismatches[:20])


def test_decode_and_offsets(attnserve_bin, model_path, vocab, tmp_path):
    texts = corpus() + BEYOND_UNICODE
    unrepresentable = {b for b in range(128) if not vocab.tokenize(bytes([b]), add_bos=False)}
    assert len(unrepresentable) < 10
    results = tokenize(attnserve_bin, model_path, tmp_path, texts, "--parse-special")
    for text, got in zip(texts, results):
        decoded = bytes(got["decoded"])
        if is_utf8(text):
            # llama.cpp drops the few bytes the vocabulary has no token for.
            assert decoded == bytes(b for b in text if b not in unrepresentable)
        elif text not in BEYOND_UNICODE:
            # Invalid bytes were tokenized as U+FFFD; llama.cpp decodes the same.
            assert decoded == b"".join(piece(vocab, t) for t in got["ids"]), text
        offsets = got["offsets"]
        assert len(offsets) == len(got["ids"])
        assert b"".join(text[b:e] for b, e in offsets) == text
        assert all(b <= e for b, e in offsets)
        assert all(offsets[i][1] == offsets[i + 1][0] for i in range(len(offsets) - 1))
        if decoded == text:
            # Each token's range holds exactly the bytes it stands for.
            for token, (b, e) in zip(got["ids"], offsets):
                assert text[b:e] == piece(vocab, token), (text, token)


def test_beyond_unicode_is_replacement_per_byte(attnserve_bin, model_path, tmp_path):
    got = tokenize(attnserve_bin, model_path, tmp_path, [b"\xf4\x90\x80\x80"])[0]
    assert bytes(got["decoded"]) == "\ufffd".encode() * 4


LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

CONVERSATIONS = [
    [],
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}],
    [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi! How can I help?"},
     {"role": "user", "content": "Tell me a joke."}],
    [{"role": "user", "content": "  spaces and\nnewlines \n\t"}, {"role": "assistant", "content": ""}],
    [{"role": "assistant", "content": "I start."}, {"role": "system", "content": "late system"}],
    [{"role": "user", "content": "日本語 😀 \u00a0nbsp\u3000 <|im_end|> {{ not jinja }}"}],
]


def render_jinja(source, conversation, add_generation_prompt):
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(source).render(messages=conversation, add_generation_prompt=add_generation_prompt,
                                          bos_token="<|begin_of_text|>")


@pytest.mark.parametrize("family", ["model", "llama3"])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_matches_jinja(attnserve_bin, model_path, vocab, tmp_path, family, add_generation_prompt):
    chats = tmp_path / "chats.json"
    chats.write_text(json.dumps(CONVERSATIONS))
    args = ["tokenize", "--model", model_path, "--chat-file", chats,
            f"--add-generation-prompt={'true' if add_generation_prompt else 'false'}"]
    if family == "model":
        source = vocab.metadata["tokenizer.chat_template"]
    else:
        source = LLAMA3_TEMPLATE
        (tmp_path / "llama3.jinja").write_text(source)
        args += ["--chat-template-file", tmp_path / "llama3.jinja"]
    results = json.loads(run_attnserve(attnserve_bin, *args))
    for conversation, got in zip(CONVERSATIONS, results):
        assert got == {"text": render_jinja(source, conversation, add_generation_prompt)}, conversation


def test_chat_template_errors(attnserve_bin, model_path, tmp_path):
    chats = tmp_path / "chats.json"
    chats.write_text(json.dumps([[{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}]]))
    got = json.loads(run_attnserve(attnserve_bin, "tokenize", "--model", model_path, "--chat-file", chats))
    assert "messages[1]" in got[0]["error"] and "robot" in got[0]["error"]
    (tmp_path / "other.jinja").write_text("{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}")
    proc = subprocess.run(
        [str(attnserve_bin), "tokenize", "--model", str(model_path), "--chat-file", str(chats),
         "--chat-template-file", str(tmp_path / "other.jinja")], capture_output=True, text=True)
    assert proc.returncode != 0 and "not recognised" in proc.stderr
