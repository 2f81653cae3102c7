"""Your tokenizer: a local Hugging Face tokenizer and its own chat template, rendered to the suite's rows.

`load_tokenizer(DIR)` reads a tokenizer directory (tokenizer.json and/or tokenizer_config.json with a
`chat_template`) without any download; `ChatTokenizer.render(conversation)` gives the same `RenderedChat` as the
byte template's `tokenizer.render` (token ids, role, assistant-turn index and loss mask per token), so every layout,
scheme, GA/DP plan and table works on it unchanged. Where the loss mask comes from:

- the template marks assistant replies with `{% generation %}…{% endgeneration %}`: the mask is exactly
  `apply_chat_template(..., return_assistant_tokens_mask=True)`, i.e. the tokens the template put in the blocks;
- no markers: the mask is read off renderings of prefixes. An assistant message's trained tokens are those between
  `render(messages[:i], add_generation_prompt=True)` (the prompt inference would send) and `render(messages[:i+1])`.
  That needs a *prefix-stable* template: the tokens of every prefix are a prefix of the whole conversation's tokens.
  Otherwise `TokenizerError` says so: the mask cannot be read, and a model trained on the whole rendering would
  learn from contexts that inference, which renders the prompt anew each turn, never produces.

The roles of the other tokens come from where each prefix's rendering ends in the whole text (templates that
rewrite earlier turns, e.g. strip their reasoning, are aligned with difflib). The shipped tokenizer
(`data/chat_tokenizer/`, a 512-token byte-level BPE trained on the shipped chats, ChatML with generation markers) is
made by `write_shipped_tokenizer`, which `python -m lossreduce_demo make-data` calls.
"""

from __future__ import annotations

import bisect
import json
import os
import re
from difflib import SequenceMatcher
from pathlib import Path

from .chats import Conversation
from .errors import UserError
from .tokenizer import ROLE_CODES, RenderedChat

SHIPPED_TOKENIZER = "chat_tokenizer"  # data/chat_tokenizer/
SHIPPED_VOCAB_SIZE = 512
IM_START, IM_END, IM_PAD = "<|im_start|>", "<|im_end|>", "<|pad|>"
# ChatML; the generation block holds the reply and its <|im_end|> (the stop token is a target), not the newline.
CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{% generation %}{{- message['content'] + '<|im_end|>' -}}{% endgeneration %}{{- '\\n' -}}"
    "{%- else -%}{{- message['content'] + '<|im_end|>\\n' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")
_FRAMEWORKS_HINT = "pip install -e '.[frameworks]' (or: pip install 'transformers>=5,<6' 'tokenizers>=0.21')"


class TokenizerError(UserError, ValueError):
    """A tokenizer directory or its chat template cannot be used; the text is one user-facing line."""


class FrameworksMissing(TokenizerError):
    """transformers or tokenizers (the [frameworks] extra) is not installed."""


def _import_frameworks(*names: str):
    """Import the named packages of the [frameworks] extra; a clear FrameworksMissing when one is absent."""
    import importlib

    try:
        return [importlib.import_module(name) for name in names]
    except ImportError as error:
        raise FrameworksMissing(f"a Hugging Face tokenizer needs transformers and tokenizers ({error}); "
                                f"install them with {_FRAMEWORKS_HINT}") from None


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}"
                   for c in text)


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


class ChatTokenizer:
    """A Hugging Face tokenizer with a chat template, rendering conversations like `tokenizer.render`."""

    def __init__(self, hf_tokenizer, name: str, chat_template: str | None = None):
        self.hf, self.name = hf_tokenizer, name
        self.chat_template = chat_template or hf_tokenizer.chat_template
        self.has_generation_markers = bool(_GENERATION_TAG.search(self.chat_template or ""))
        self._texts: dict[int, str] = {}

    def with_template(self, chat_template: str, name: str) -> ChatTokenizer:
        """The same vocabulary under another chat template (e.g. to compare templates)."""
        return ChatTokenizer(self.hf, name, chat_template)

    def __repr__(self) -> str:
        marks = "generation markers" if self.has_generation_markers else "mask from prefixes"
        return f"ChatTokenizer({self.name!r}, vocab {self.vocab_size}, {marks})"

    @property
    def vocab_size(self) -> int:
        """Ids in use (GPTConfig.vocab_size of a model trained on these rows)."""
        return len(self.hf)

    @property
    def pad_token(self) -> int:
        for token in (self.hf.pad_token_id, self.hf.eos_token_id):
            if token is not None:
                return int(token)
        return 0

    @property
    def eot_token(self) -> int:
        """The token that ends an assistant turn (the tokenizer's eos, e.g. <|im_end|>)."""
        if self.hf.eos_token_id is None:
            raise TokenizerError(f"{self.name}: the tokenizer has no eos_token (the end-of-turn token)")
        return int(self.hf.eos_token_id)

    def token_text(self, token: int) -> str:
        """Printable text of one token (its piece where a lone byte-level token decodes to no valid text)."""
        token = int(token)
        if token not in self._texts:
            text = self.hf.decode([token])
            if "\ufffd" in text or not text:
                text = self.hf.convert_ids_to_tokens(token)
            self._texts[token] = _printable(text)
        return self._texts[token]

    def encode(self, text: str) -> list[int]:
        return self.hf(text, add_special_tokens=False)["input_ids"]

    def decode(self, ids) -> str:
        return self.hf.decode([int(i) for i in ids])

    # ------------------------------------------------------------------ rendering

    def _render(self, messages, where: str, **kwargs):
        try:
            return self.hf.apply_chat_template(messages, chat_template=self.chat_template, **kwargs)
        except Exception as error:  # noqa: BLE001 - any failure inside a user's template is reported the same way
            raise TokenizerError(f"{where}: the chat template of {self.name} failed on this conversation: "
                                 f"{_first_line(error)}") from None

    def _text(self, messages, where: str, **kwargs) -> str:
        return self._render(messages, where, tokenize=False, **kwargs)

    def render(self, conv: Conversation) -> RenderedChat:
        """The conversation as the template renders it, with role, assistant turn and loss mask per token."""
        where = conv.origin or "conversation"
        messages = [m.to_dict() for m in conv.messages]
        text = self._text(messages, where)
        if self.has_generation_markers:
            encoded = self._render(messages, where, tokenize=True, return_dict=True,
                                   return_assistant_tokens_mask=True,
                                   tokenizer_kwargs={"return_offsets_mapping": True})
        else:
            encoded = self.hf(text, add_special_tokens=False, return_offsets_mapping=True)
        tokens, offsets = list(encoded["input_ids"]), encoded["offset_mapping"]
        if self.has_generation_markers:
            mask = list(encoded["assistant_masks"])
        else:
            mask = self._mask_from_prefixes(messages, tokens, where)
        owner = self._message_of_each_token(messages, text, offsets, where)
        assistant_index = {i: j for j, i in enumerate(i for i, m in enumerate(messages) if m["role"] == "assistant")}
        role, turn = [], []
        for t, (i, token) in enumerate(zip(owner, tokens)):
            is_bos = t == 0 and token == self.hf.bos_token_id
            role.append(ROLE_CODES["bos"] if is_bos else ROLE_CODES[messages[i]["role"]])
            turn.append(-1 if is_bos else assistant_index.get(i, -1))
            if mask[t] and turn[-1] < 0:
                raise TokenizerError(f"{where}: the chat template of {self.name} marks token {t} "
                                     f"({self.token_text(token)!r}) as trained but it is not part of an assistant "
                                     "message")
        return RenderedChat(tokens, role, turn, [int(m) for m in mask], conv.origin, pad_token=self.pad_token)

    def render_turn(self, conv: Conversation, turn: int) -> RenderedChat:
        """The conversation up to and including assistant turn `turn`, rendered on its own (format A's row, and
        what inference would have seen): differs from a slice of `render(conv)` if the template rewrites history."""
        ends = [i for i, m in enumerate(conv.messages) if m.role == "assistant"]
        return self.render(Conversation(conv.messages[: ends[turn] + 1], origin=conv.origin))

    def _mask_from_prefixes(self, messages, tokens: list[int], where: str) -> list[int]:
        mask = [0] * len(tokens)
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            if i == 0:
                raise TokenizerError(f"{where}: the conversation starts with an assistant message: the template of "
                                     f"{self.name} has no {{% generation %}} markers, and there is no prompt before "
                                     "that reply to read its loss mask against")
            prompt = self._ids(messages[:i], where, add_generation_prompt=True)
            upto = self._ids(messages[: i + 1], where)
            self._require_prefix(prompt, upto, f"the first {i} messages with the assistant header", where)
            self._require_prefix(upto, tokens, f"the first {i + 1} messages", where)
            mask[len(prompt): len(upto)] = [1] * (len(upto) - len(prompt))
        return mask

    def _ids(self, messages, where: str, **kwargs) -> list[int]:
        return list(self._render(messages, where, tokenize=True, return_dict=False, **kwargs))

    def _require_prefix(self, part: list[int], whole: list[int], what: str, where: str) -> None:
        if whole[: len(part)] == part:
            return
        t = next((k for k, (a, b) in enumerate(zip(part, whole)) if a != b), min(len(part), len(whole)))
        got = self.token_text(part[t]) if t < len(part) else "(end)"
        then = self.token_text(whole[t]) if t < len(whole) else "(end)"
        raise TokenizerError(
            f"{where}: the chat template of {self.name} is not prefix-stable: {what} render to tokens that are not "
            f"a prefix of the longer rendering (token {t}: {got!r} vs {then!r}). Without {{% generation %}} markers "
            "the loss mask is read off such prefixes, so it cannot be found; and training on the whole rendering "
            "would teach contexts that inference, which renders the prompt anew each turn, never sees. Mark the "
            "assistant reply in the template with {% generation %}...{% endgeneration %}")

    def _message_of_each_token(self, messages, text: str, offsets, where: str) -> list[int]:
        """Index of the message each token belongs to: message i ends where the rendering of messages[:i+1] ends."""
        ends, previous = [], 0
        for i in range(len(messages) - 1):
            prefix = self._text(messages[: i + 1], where)
            previous = max(previous, _end_of_prefix(prefix, text))
            ends.append(previous)
        return [bisect.bisect_right(ends, start) for start, _ in offsets]


def _end_of_prefix(prefix: str, text: str) -> int:
    """Where the text rendered for a prefix of the conversation ends inside the whole conversation's text."""
    if text.startswith(prefix):
        return len(prefix)
    blocks = [b for b in SequenceMatcher(None, prefix, text, autojunk=False).get_matching_blocks() if b.size]
    return max(b.b + b.size for b in blocks) if blocks else 0


def load_tokenizer(path) -> ChatTokenizer:
    """A local Hugging Face tokenizer directory with a chat template (nothing is downloaded)."""
    folder = Path(path).expanduser()
    name = str(path)
    if not folder.is_dir():
        raise TokenizerError(f"{name}: no such tokenizer directory" if not folder.exists() else
                             f"{name}: not a directory (pass the folder holding tokenizer.json)")
    if not any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        raise TokenizerError(f"{name}: not a Hugging Face tokenizer directory (no tokenizer.json or "
                             "tokenizer_config.json)")
    (transformers,) = _import_frameworks("transformers")
    try:
        hf = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as error:  # noqa: BLE001 - whatever transformers raises, the user gets one line
        raise TokenizerError(f"{name}: cannot load the tokenizer: {_first_line(error)}") from None
    if not getattr(hf, "chat_template", None):
        raise TokenizerError(f"{name}: the tokenizer has no chat template (add 'chat_template' to "
                             "tokenizer_config.json or a chat_template.jinja file)")
    return ChatTokenizer(hf, name)


def as_tokenizer(tokenizer) -> ChatTokenizer | None:
    """None (the byte template), a ChatTokenizer, or a directory to load."""
    if tokenizer is None or isinstance(tokenizer, ChatTokenizer):
        return tokenizer
    if isinstance(tokenizer, (str, os.PathLike)):
        return load_tokenizer(tokenizer)
    raise TypeError(f"tokenizer must be a directory or a ChatTokenizer, got {type(tokenizer).__name__}")


def shipped_tokenizer() -> ChatTokenizer:
    """The tokenizer in data/chat_tokenizer/."""
    from .notebook import data_path

    return load_tokenizer(data_path(SHIPPED_TOKENIZER))


# ---------------------------------------------------------------------- the shipped tokenizer (make-data)


def train_chat_tokenizer(conversations, vocab_size: int = SHIPPED_VOCAB_SIZE) -> dict[str, str]:
    """A byte-level BPE trained on the conversations' role names and contents, with the ChatML template:
    {file name: text} of a tokenizer directory. The same conversations give the same bytes."""
    _import_frameworks("tokenizers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[IM_PAD, IM_START, IM_END],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator((f"{m.role}\n{m.content}" for c in conversations for m in c.messages), trainer)
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "chat_template": CHATML_TEMPLATE,
              "eos_token": IM_END, "pad_token": IM_PAD, "model_max_length": 1024}
    return {"tokenizer.json": bpe.to_str(pretty=True) + "\n",
            "tokenizer_config.json": json.dumps(config, indent=2, sort_keys=True) + "\n"}


def write_tokenizer_dir(files: dict[str, str], folder) -> Path:
    """Write {name: text} into `folder` (each file via a temporary file and os.replace: `outputs.replacing`)."""
    from .outputs import replacing

    folder = Path(folder)
    for name, text in files.items():
        with replacing(folder / name, option=None) as temporary:
            temporary.write_text(text, encoding="utf-8", newline="\n")
    return folder


def write_shipped_tokenizer(out_dir, conversations) -> Path:
    """data/chat_tokenizer/, trained on the shipped default chats."""
    return write_tokenizer_dir(train_chat_tokenizer(conversations), Path(out_dir) / SHIPPED_TOKENIZER)
