"""Byte-level tokenizer and chat template.

Ids 0..255 are the UTF-8 bytes, so any text works; a few special ids mark the conversation's structure:

    <|bos|><|system|>…<|eot|><|user|>…<|eot|><|assistant|>…<|eot|>…

Rendering annotates every token with its role, the assistant turn it belongs to and the loss mask:
1 on assistant content and its closing <|eot|> only (the <|assistant|> header is prompt, not target).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import groupby

from .chats import Conversation

PAD, BOS, SYSTEM, USER, ASSISTANT, EOT = 256, 257, 258, 259, 260, 261
VOCAB_SIZE = 264  # 262 used, rounded up
SPECIAL_TEXT = {PAD: "<|pad|>", BOS: "<|bos|>", SYSTEM: "<|system|>", USER: "<|user|>",
                ASSISTANT: "<|assistant|>", EOT: "<|eot|>"}
ROLE_HEADER = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}

# Role codes of rendered tokens (the same codes fill Batch.role).
ROLE_CODES = {"pad": 0, "bos": 1, "system": 2, "user": 3, "assistant": 4}
ROLE_NAMES = {code: name for name, code in ROLE_CODES.items()}


def encode(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def decode(ids) -> str:
    """Bytes back to text; special tokens are written out as <|name|>."""
    out, buf = [], bytearray()
    for i in ids:
        i = int(i)
        if i < 256:
            buf.append(i)
            continue
        out.append(buf.decode("utf-8", errors="replace"))
        buf = bytearray()
        out.append(SPECIAL_TEXT.get(i, f"<|{i}|>"))
    out.append(buf.decode("utf-8", errors="replace"))
    return "".join(out)


def token_text(i: int) -> str:
    """Printable label of one token (for tables and plots)."""
    i = int(i)
    if i >= 256:
        return SPECIAL_TEXT.get(i, f"<|{i}|>")
    return chr(i) if 32 <= i < 127 else f"\\x{i:02x}"


@dataclass
class RenderedChat:
    """One conversation as tokens, with a label per token."""

    tokens: list[int]
    role: list[int]  # ROLE_CODES per token
    turn: list[int]  # index of the assistant turn (0..T-1) the token belongs to, -1 outside assistant messages
    loss_mask: list[int]  # 1 where the token is a training target
    origin: str = ""
    pad_token: int = PAD  # the id that pads rows of this tokenizer's chats

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def n_turns(self) -> int:
        return max(self.turn, default=-1) + 1

    def turn_end(self, j: int) -> int:
        """Index one past the last token of assistant turn j (its <|eot|>)."""
        return max(t for t, tj in enumerate(self.turn) if tj == j) + 1

    def loss_tokens_per_turn(self) -> list[int]:
        counts = [0] * self.n_turns
        for tj, m in zip(self.turn, self.loss_mask):
            if m:
                counts[tj] += 1
        return counts


def render(conv: Conversation) -> RenderedChat:
    """Apply the chat template to a conversation."""
    tokens, role, turn, mask = [BOS], [ROLE_CODES["bos"]], [-1], [0]
    n_assistant = 0
    for msg in conv.messages:
        code = ROLE_CODES[msg.role]
        body = encode(msg.content) + [EOT]
        is_assistant = msg.role == "assistant"
        j = n_assistant if is_assistant else -1
        tokens += [ROLE_HEADER[msg.role]] + body
        role += [code] * (1 + len(body))
        turn += [j] * (1 + len(body))
        mask += [0] + [int(is_assistant)] * len(body)
        n_assistant += is_assistant
    return RenderedChat(tokens, role, turn, mask, conv.origin)


def template_text(conv: Conversation, mark_loss: bool = True, tokenizer=None) -> str:
    """The rendered template as text; with mark_loss, trained-on spans are wrapped in [[ ]].
    `tokenizer`: a hf_tokenizer.ChatTokenizer to render with its own template (default: this byte template)."""
    r = tokenizer.render(conv) if tokenizer else render(conv)
    pieces = []
    for in_loss, run in groupby(zip(r.loss_mask, r.tokens), key=lambda pair: pair[0]):
        text = (tokenizer.decode if tokenizer else decode)([tok for _, tok in run])
        pieces.append(f"[[{text}]]" if in_loss and mark_loss else text)
    return "".join(pieces)
