"""Your tokenizer: masks against transformers' own `apply_chat_template`, every layout and GA/DP plan on the rows,
the bad directories and templates (one clear line, CLI exit 2), and the three template pitfalls."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lossreduce_demo import hf_tokenizer, layouts, plots, report, synth
from lossreduce_demo import template_pitfalls as pitfalls
from lossreduce_demo.chats import Conversation, Message, load_chats
from lossreduce_demo.cli import main
from lossreduce_demo.exercises import nb06
from lossreduce_demo.hf_tokenizer import CHATML_TEMPLATE, TokenizerError, load_tokenizer, shipped_tokenizer
from lossreduce_demo.reductions import SCHEMES, Plan, effective_weights, token_weights
from lossreduce_demo.tokenizer import template_text

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "default_chats.jsonl"
SHIPPED_DIR = ROOT / "data" / hf_tokenizer.SHIPPED_TOKENIZER
CHATS = load_chats(DATA)
# ChatML without generation markers: the mask must come from prefixes (and then includes the closing newline).
CHATML_NO_MARKERS = CHATML_TEMPLATE.replace("{% generation %}", "").replace("{% endgeneration %}", "")
# The same without the newline after <|im_end|>: with and without markers it trains exactly the same tokens.
BARE = CHATML_TEMPLATE.replace("'<|im_end|>' -}}{% endgeneration %}{{- '\\n' -}}", "'<|im_end|>' -}}{% endgeneration %}")
BARE = BARE.replace("'<|im_end|>\\n'", "'<|im_end|>'")
BARE_NO_MARKERS = BARE.replace("{% generation %}", "").replace("{% endgeneration %}", "")
PROPERTY = settings(max_examples=40, deadline=None)


@pytest.fixture(scope="module")
def tok():
    return shipped_tokenizer()


def reference(tok, conv, **kwargs) -> dict:
    return tok.hf.apply_chat_template([m.to_dict() for m in conv.messages], tokenize=True, return_dict=True,
                                      **kwargs)


def trained_text_per_turn(tok, chat) -> list[str]:
    return [tok.decode([t for t, tj, m in zip(chat.tokens, chat.turn, chat.loss_mask) if tj == j and m])
            for j in range(chat.n_turns)]


texts = st.text(st.sampled_from("abcxyz ,.!?\nQé😀"), min_size=0, max_size=12)


@st.composite
def conversations(draw):
    messages = [Message("system", draw(texts))] if draw(st.booleans()) else []
    for _ in range(draw(st.integers(1, 3))):
        messages += [Message("user", draw(texts)), Message("assistant", draw(texts))]
    return Conversation(tuple(messages))


# ------------------------------------------------------------------ masks: transformers' own answer


def test_shipped_tokenizer_is_small_chatml_with_generation_markers(tok):
    assert tok.vocab_size == hf_tokenizer.SHIPPED_VOCAB_SIZE and tok.has_generation_markers
    assert sum(p.stat().st_size for p in SHIPPED_DIR.iterdir()) < 100_000
    assert tok.token_text(tok.eot_token) == "<|im_end|>"


def test_shipped_masks_are_apply_chat_templates_assistant_masks(tok):
    for conv in CHATS:
        chat, ref = tok.render(conv), reference(tok, conv, return_assistant_tokens_mask=True)
        assert chat.tokens == ref["input_ids"] and chat.loss_mask == ref["assistant_masks"]
        replies = [m.content for m in conv.messages if m.role == "assistant"]
        assert trained_text_per_turn(tok, chat) == [r + "<|im_end|>" for r in replies]


@PROPERTY
@given(conversations())
def test_any_conversation_masks_like_apply_chat_template(conv):
    tok = shipped_tokenizer()
    chat, ref = tok.render(conv), reference(tok, conv, return_assistant_tokens_mask=True)
    assert chat.tokens == ref["input_ids"] and chat.loss_mask == ref["assistant_masks"]


@PROPERTY
@given(conversations())
def test_without_markers_the_mask_from_prefixes_is_the_marked_templates_mask(conv):
    tok = shipped_tokenizer()
    marked = tok.with_template(BARE, "bare")
    chat = tok.with_template(BARE_NO_MARKERS, "bare, no markers").render(conv)
    ref = reference(marked, conv, chat_template=BARE, return_assistant_tokens_mask=True)
    assert chat.tokens == ref["input_ids"] and chat.loss_mask == ref["assistant_masks"]


def test_without_markers_chatml_trains_each_reply_with_its_closing_tokens(tok):
    plain = tok.with_template(CHATML_NO_MARKERS, "chatml, no markers")
    assert not plain.has_generation_markers
    for conv in CHATS[:64]:
        chat = plain.render(conv)
        assert chat.tokens == reference(plain, conv, chat_template=CHATML_NO_MARKERS)["input_ids"]
        replies = [m.content for m in conv.messages if m.role == "assistant"]
        assert trained_text_per_turn(plain, chat) == [r + "<|im_end|>\n" for r in replies]


@pytest.mark.parametrize("template", [CHATML_TEMPLATE, pitfalls.HISTORY_STRIPPING_TEMPLATE])
def test_roles_and_turns_follow_the_messages(tok, template):
    """Every token is labelled with the message that wrote it, also where the template rewrites history."""
    tok = tok.with_template(template, "t")
    for conv in map(pitfalls.with_reasoning, CHATS[:32]):
        chat = tok.render(conv)
        text = tok.hf.apply_chat_template([m.to_dict() for m in conv.messages], tokenize=False,
                                          chat_template=template)
        for role in ("system", "user"):
            ours = tok.hf.decode([t for t, r in zip(chat.tokens, chat.role) if r == layouts.ROLE_CODES[role]])
            assert ours == "".join(f"<|im_start|>{role}\n{m.content}<|im_end|>\n" for m in conv.messages
                                   if m.role == role)
        blocks = [tok.hf.decode([t for t, tj in zip(chat.tokens, chat.turn) if tj == j])
                  for j in range(chat.n_turns)]
        assert len(blocks) == conv.n_assistant_turns
        assert all(b.startswith("<|im_start|>assistant\n") and b.endswith("<|im_end|>\n") and b in text
                   for b in blocks)


# ------------------------------------------------------------------ every layout, scheme and GA/DP plan


@pytest.mark.parametrize("layout", layouts.LAYOUTS)
def test_global_normalisation_over_ranks_and_micro_batches_is_the_full_batch(tok, layout):
    batch = layouts.make_layout(CHATS[:48], layout, tokenizer=tok)
    assert int(batch.tokens.max()) < tok.vocab_size and int(batch.loss_mask.sum()) > 0
    for scheme in SCHEMES:
        full = token_weights(batch, scheme)
        dealt, _, _ = effective_weights(batch, scheme, Plan(ranks=2, micro_batches=3, normalization="global"))
        torch.testing.assert_close(dealt, full, rtol=1e-12, atol=1e-15)
    naive, _, _ = effective_weights(batch, "token-mean", Plan(ranks=2, micro_batches=3, normalization="local"))
    assert (naive - token_weights(batch, "token-mean")).abs().max() > 1e-4  # negative control


def test_split_and_multiturn_give_each_turn_the_same_token_mean_weight(tok):
    tables = {lay: report.weights_table(CHATS[:64], "token-mean", layout=lay, tokenizer=tok)
              for lay in ("split", "multiturn", "packed")}
    per_turn = {lay: t[t.loss_mask == 1].groupby(["conversation", "turn"]).weight.sum()
                for lay, t in tables.items()}
    pd.testing.assert_series_equal(per_turn["split"], per_turn["multiturn"], rtol=1e-12)
    pd.testing.assert_series_equal(per_turn["packed"], per_turn["multiturn"], rtol=1e-12)
    table = tables["multiturn"]
    assert list(table.text) == [tok.token_text(t) for t in table.token]


def test_split_renders_each_turn_on_its_own(tok):
    """A prefix-stable template: a turn rendered alone is a slice of the whole; a history-stripping one: not."""
    for conv in CHATS[:32]:
        whole = tok.render(conv)
        for j in range(whole.n_turns):
            assert tok.render_turn(conv, j).tokens == whole.tokens[: whole.turn_end(j)]
    strip = tok.with_template(pitfalls.HISTORY_STRIPPING_TEMPLATE, "strip")
    convs = [pitfalls.with_reasoning(c) for c in CHATS[:32]]
    split, whole = (layouts.make_layout(convs, lay, tokenizer=strip) for lay in ("split", "multiturn"))
    extra = sum(c.n_assistant_turns - 1 for c in convs)  # every turn but the last loses its reasoning in B
    assert extra > 0 and int(split.loss_mask.sum()) > int(whole.loss_mask.sum())


def test_a_gpt_sized_by_the_tokenizer_trains_on_its_rows(tok):
    batch = layouts.multiturn_layout(CHATS[:8], tokenizer=tok)
    model = pitfalls.train_on_rows(batch, pitfalls.model_config(tok), steps=2)
    assert model.cfg.vocab_size == tok.vocab_size
    assert torch.isfinite(layouts.token_losses(model, batch)).all()
    with pytest.raises(ValueError, match="vocab_size is 264: size it by the tokenizer"):
        pitfalls.train_on_rows(batch, pitfalls.TINY, steps=1)  # the byte template's 264 ids are too few


# ------------------------------------------------------------------ the pitfalls


def test_end_of_turn_outside_the_mask_drops_exactly_one_target_per_turn(tok):
    outside = tok.with_template(pitfalls.EOT_OUTSIDE_MASK_TEMPLATE, "eot outside")
    right, wrong = (layouts.multiturn_layout(CHATS, tokenizer=t) for t in (tok, outside))
    assert torch.equal(right.tokens, wrong.tokens)
    n_turns = sum(c.n_assistant_turns for c in CHATS)
    assert int(right.loss_mask.sum()) - int(wrong.loss_mask.sum()) == n_turns
    assert not (wrong.loss_mask & (wrong.tokens == tok.eot_token)).any()


def test_mask_on_inputs_moves_every_trained_token_one_to_the_right(tok):
    batch = layouts.multiturn_layout(CHATS, tokenizer=tok)
    counts = pitfalls.label_alignment(batch, tok.eot_token)
    n_turns = sum(c.n_assistant_turns for c in CHATS)
    right, shifted = counts.loc["labels (right)"], counts.loc["inputs (off by one)"]
    assert right["first reply tokens"] == n_turns and shifted["first reply tokens"] == 0
    assert right["outside the replies"] == 0 and shifted["outside the replies"] == n_turns
    assert right["trained tokens"] == int(batch.loss_mask.sum())


def test_history_stripping_trains_earlier_turns_differently_in_a_and_b(tok):
    strip = tok.with_template(pitfalls.HISTORY_STRIPPING_TEMPLATE, "strip")
    conv = pitfalls.with_reasoning(CHATS[1])
    turns = pitfalls.turn_contexts(strip, conv)
    assert len(turns) == 3
    assert (turns["A trains"].str.startswith("<think>")).all()
    assert not turns["B trains"].iloc[:-1].str.contains("<think>").any()
    assert turns["B trains"].iloc[-1] == turns["A trains"].iloc[-1]
    with pytest.raises(TokenizerError, match="not prefix-stable"):  # without markers it cannot be masked at all
        tok.with_template(pitfalls.HISTORY_STRIPPING_TEMPLATE.replace("{% generation %}", "").replace(
            "{% endgeneration %}", ""), "strip, no markers").render(conv)


# ------------------------------------------------------------------ bad directories and templates


def tokenizer_dir(tmp_path, **config) -> Path:
    folder = tmp_path / "tok"
    folder.mkdir()
    shutil.copy(SHIPPED_DIR / "tokenizer.json", folder / "tokenizer.json")
    base = json.loads((SHIPPED_DIR / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**base, **config}))
    return folder


def bad_tokenizer(tmp_path, case) -> tuple[Path, str]:
    """(directory, what the error must say) of one bad case."""
    if case == "missing":
        return tmp_path / "nope", "no such tokenizer directory"
    if case == "a file":
        return shutil.copy(DATA, tmp_path / "chats.jsonl"), "not a directory"
    if case == "empty":
        (tmp_path / "empty").mkdir()
        return tmp_path / "empty", "not a Hugging Face tokenizer directory"
    if case == "corrupt":
        folder = tokenizer_dir(tmp_path)
        (folder / "tokenizer.json").write_text("{not json")
        return folder, "cannot load the tokenizer"
    if case == "no chat template":
        return tokenizer_dir(tmp_path, chat_template=None), "has no chat template"
    if case == "template raises":
        return (tokenizer_dir(tmp_path, chat_template="{{ raise_exception('only one-turn chats, please') }}"),
                "failed on this conversation: TemplateError: only one-turn chats, please")
    if case == "not prefix-stable":  # the message count is written first: no prefix is a prefix of the whole
        return (tokenizer_dir(tmp_path, chat_template="{{ messages | length }}" + CHATML_NO_MARKERS),
                "is not prefix-stable")
    raise ValueError(case)


BAD = ["missing", "a file", "empty", "corrupt", "no chat template", "template raises", "not prefix-stable"]


@pytest.mark.parametrize("case", BAD)
def test_bad_tokenizers_give_one_clear_line_and_exit_2(tmp_path, capsys, case):
    folder, says = bad_tokenizer(tmp_path, case)
    rc = main(["weights", str(DATA), "--tokenizer", str(folder)])
    out, err = capsys.readouterr()
    assert rc == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    assert says in err and "Traceback" not in err
    if case in ("template raises", "not prefix-stable"):
        assert err.startswith(f"error: {DATA}:1: the chat template of {folder}")


def test_missing_frameworks_say_what_to_install(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` now raises ImportError
    with pytest.raises(hf_tokenizer.FrameworksMissing, match=r"pip install -e '\.\[frameworks\]'"):
        load_tokenizer(SHIPPED_DIR)
    assert main(["weights", str(DATA), "--tokenizer", str(SHIPPED_DIR)]) == 2
    assert "needs transformers and tokenizers" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.warns(UserWarning, match="chat_tokenizer not written"):
        written = synth.write_shipped(tmp_path)
    assert len(written) == len(synth.SHIPPED)


def test_cli_end_to_end_with_the_shipped_tokenizer(tmp_path):
    csv = tmp_path / "w.csv"
    done = subprocess.run([sys.executable, "-m", "lossreduce_demo", "weights", str(DATA), "--tokenizer",
                           str(SHIPPED_DIR), "--format", "split", "--ranks", "2", "--micro-batches", "2",
                           "--out", str(csv)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={"HF_HUB_OFFLINE": "1", "LOSSREDUCE_THREADS": "1", "PATH": ""})
    assert done.returncode == 0, done.stderr
    tok = shipped_tokenizer()
    expected = report.weights_table(CHATS, "token-mean", Plan(2, 2), layout="split", tokenizer=tok)
    assert f"loss tokens ({SHIPPED_DIR})" in done.stdout
    table = pd.read_csv(csv, keep_default_na=False)
    pd.testing.assert_frame_equal(table, expected, check_dtype=False, rtol=1e-12)
    assert table.weight.sum() == pytest.approx(1.0, rel=1e-12)


# ------------------------------------------------------------------ notebook 06's pieces


def test_template_text_marks_what_the_tokenizer_trains(tok):
    text = template_text(CHATS[1], tokenizer=tok)
    replies = [m.content for m in CHATS[1].messages if m.role == "assistant"]
    assert text.count("[[") == len(replies) and all(f"[[{r}<|im_end|>]]" in text for r in replies)


def test_tokenization_lengths_plot_reads_at_a_glance(tok):
    lengths = {name: report.weights_summary(report.weights_table(CHATS[:40], "token-mean", tokenizer=t))[0]
               .loss_tokens.to_numpy() for name, t in (("byte template", None), ("BPE", tok))}
    fig = plots.tokenization_lengths(lengths)
    ax = fig.axes[0]
    fig.canvas.draw()
    for axis in (ax.xaxis, ax.yaxis):
        assert len([t for t in axis.get_ticklabels() if t.get_text()]) >= 2
    assert f"{lengths['BPE'].sum() / lengths['byte template'].sum():.2f}×" in ax.get_title()


def test_notebook_06_checkers_accept_the_answer_and_reject_others(tok, capsys):
    bpe = int(layouts.multiturn_layout(CHATS, tokenizer=tok).loss_mask.sum())
    ratio = bpe / int(layouts.multiturn_layout(CHATS).loss_mask.sum())
    assert nb06.check_2(round(ratio, 2)) and not nb06.check_2(1.0)
    assert nb06.check_3(42 / 3) and not nb06.check_3(13.5)  # 13.5 is the byte template's answer
    assert "✅" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["transformers", "trl-grpo"])
def test_framework_presets_run_on_the_tokenizers_rows(tok, tmp_path, capsys, name):
    from lossreduce_demo.frameworks import effective_weights as framework_weights

    csv = tmp_path / "w.csv"
    rc = main(["weights", str(DATA), "--tokenizer", str(SHIPPED_DIR), "--framework", name, "--micro-batches", "2",
               "--ranks", "2", "--out", str(csv)])
    assert rc == 0, capsys.readouterr().err
    table = pd.read_csv(csv, keep_default_na=False)
    batch = layouts.multiturn_layout(CHATS, tokenizer=tok)
    expected = framework_weights(batch, name, ranks=2, micro_batches=2)
    assert table[table.loss_mask == 1].weight.to_numpy() == pytest.approx(expected[batch.loss_mask].numpy(),
                                                                          rel=1e-12)


# Llama 3's template (no generation markers; bos token first; replies trimmed, closed by <|eot_id|>).
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")


@pytest.fixture(scope="module")
def llama3_dir(tmp_path_factory):
    """Another local tokenizer directory: a BPE trained here, Llama-3 special tokens and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    specials = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer, bpe.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    bpe.train_from_iterator([m.content for c in CHATS for m in c.messages], trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "chat_template": LLAMA3_TEMPLATE,
              "bos_token": specials[0], "eos_token": specials[-1]}
    return hf_tokenizer.write_tokenizer_dir({"tokenizer.json": bpe.to_str(),
                                             "tokenizer_config.json": json.dumps(config)},
                                            tmp_path_factory.mktemp("llama3") / "tok")


def test_any_local_tokenizer_directory_works(llama3_dir, tmp_path, capsys):
    tok = load_tokenizer(llama3_dir)
    assert not tok.has_generation_markers and tok.vocab_size == 300
    for conv in CHATS[:64]:
        chat = tok.render(conv)
        assert chat.tokens == reference(tok, conv)["input_ids"]
        assert chat.role[0] == layouts.ROLE_CODES["bos"] and chat.turn[0] == -1
        replies = [m.content.strip() for m in conv.messages if m.role == "assistant"]
        assert trained_text_per_turn(tok, chat) == [r + "<|eot_id|>" for r in replies]
    csv = tmp_path / "w.csv"
    assert main(["weights", str(DATA), "--tokenizer", str(llama3_dir), "--format", "packed", "--out", str(csv)]) == 0
    table = pd.read_csv(csv, keep_default_na=False)
    assert table.weight.sum() == pytest.approx(1.0) and table.text.iloc[0] == "<|begin_of_text|>"
    assert capsys.readouterr().err == ""


def test_a_conversation_that_opens_with_the_assistant(tok):
    conv = Conversation((Message("assistant", "hello"), Message("user", "hi"), Message("assistant", "yes")))
    assert trained_text_per_turn(tok, tok.render(conv)) == ["hello<|im_end|>", "yes<|im_end|>"]
    with pytest.raises(TokenizerError, match="starts with an assistant message"):
        tok.with_template(CHATML_NO_MARKERS, "no markers").render(conv)


def test_notebook_06_reads_your_own_tokenizer(llama3_dir, tmp_path, monkeypatch):
    """Sections 1 and 5 of notebook 06 with TOKENIZER pointed at another local directory (section 6 uses the shipped
    one; the whole notebook runs in test_notebooks)."""
    import nbformat
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    monkeypatch.setenv("LOSSREDUCE_FAST", "1")
    path = ROOT / "notebooks" / "06_your_own_data.ipynb"
    nb = nbformat.read(path, as_version=4)
    start, end = (next(i for i, c in enumerate(nb.cells) if heading in c.source) for heading in ("## 2.", "## 6."))
    imports = [c for c in nb.cells if c.source.startswith("import pandas as pd")]
    section_5 = [c for c in nb.cells[start:end] if "## 5." in c.source or c.source.startswith("from lossreduce_demo.hf")]
    nb.cells = nb.cells[:start] + imports + nb.cells[nb.cells.index(section_5[0]):end]
    cell = next(c for c in nb.cells if c.source.startswith("from lossreduce_demo.hf_tokenizer import load_tokenizer"))
    cell.source = cell.source.replace('notebook.data_path("chat_tokenizer")', repr(str(llama3_dir)))
    km = KernelManager(kernel_name="python3", transport="ipc", ip=str(tmp_path / "kernel"))
    NotebookClient(nb, km=km, timeout=300, resources={"metadata": {"path": str(path.parent)}}).execute()
    printed = "".join(out.get("text", "") for c in nb.cells if c.cell_type == "code" for out in c.outputs)
    assert "vocab 300, mask from prefixes" in printed and "<|eot_id|>" in printed


def test_the_notebooks_naive_and_fixed_labels(tok):
    """Notebook 06 writes the right labels by hand next to the off-by-one; the hand-written ones are model_inputs'."""
    batch = layouts.packed_layout(CHATS[:40], tokenizer=tok)
    right = torch.where(batch.loss_mask[:, 1:], batch.tokens[:, 1:], layouts.IGNORE_INDEX)
    shifted = torch.where(batch.loss_mask[:, :-1], batch.tokens[:, 1:], layouts.IGNORE_INDEX)
    assert torch.equal(right, batch.model_inputs()["targets"])
    assert not torch.equal(shifted, right)  # negative control
