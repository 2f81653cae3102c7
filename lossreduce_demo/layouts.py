"""Layouts: how conversations become training rows (docs/science.md §4).

- `split` (format A): one sample per assistant turn, with its whole prefix; loss on that turn only.
- `multiturn` (format B): one sample per conversation, loss on every assistant turn.
- `packed`: several conversations per fixed-length row, positions restarting per conversation and a
  block-diagonal causal attention mask; a sample is still one conversation.
- `packed-causal`: the same rows fed as a loader without `position_ids` / varlen attention feeds them (TRL
  #1230, #3067): plain causal attention over the whole row and positions running on, so a conversation attends
  to the ones before it in its row ("contamination", E9). Same tokens, labels and weights as `packed`; not one of
  the suite's three formats (`LAYOUTS`), a mistake to measure.

Labels live on the token sequence: `loss_mask[b, t]` says token t is a target (predicted from tokens < t),
so the weight of a token is the weight of predicting it. The model sees `tokens[:, :-1]`, predicts `tokens[:, 1:]`.

Bounded before allocating (`SizeLimitError`): at most MAX_TOKENS rendered tokens in all, and at most MAX_SLOTS
padded slots (rows × row length; a slot costs ~190 bytes in a weights table, a real token ~360).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .chats import ChatFormatError
from .errors import SizeLimitError
from .hf_tokenizer import as_tokenizer
from .model import IGNORE_INDEX
from .tokenizer import ROLE_CODES, RenderedChat, render

LAYOUTS = ("split", "multiturn", "packed")
CONTAMINATED = "packed-causal"
ALL_LAYOUTS = LAYOUTS + (CONTAMINATED,)
PACKED_LAYOUTS = ("packed", CONTAMINATED)  # several conversations per fixed-length row
MAX_TOKENS = 1 << 22  # rendered tokens of all conversations of one layout (4,194,304)
MAX_SLOTS = 1 << 22  # padded rows × row length of one layout


@dataclass
class Batch:
    """A padded batch of rows; every field is (rows, row_len). Ids are global within the batch, -1 on padding."""

    tokens: torch.Tensor  # token ids, the tokenizer's pad id where empty
    loss_mask: torch.Tensor  # bool, True where the token is a training target
    sample_id: torch.Tensor  # training sample the token belongs to
    conversation_id: torch.Tensor  # conversation the token comes from
    turn_id: torch.Tensor  # global index of the assistant turn (-1 outside assistant messages)
    turn_in_conversation: torch.Tensor  # 0..T-1 within its conversation (-1 outside assistant messages)
    role: torch.Tensor  # tokenizer.ROLE_CODES
    segment_id: torch.Tensor  # conversation's slot within its row (packed), 0 otherwise, -1 on padding
    position: torch.Tensor  # position within its own conversation (restarts per packed segment)
    layout: str = "multiturn"

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.tokens.shape)

    def select(self, rows) -> Batch:
        """A sub-batch (e.g. one micro-batch) keeping the global ids."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        return Batch(**{f.name: getattr(self, f.name)[rows] for f in fields(self) if f.name != "layout"},
                     layout=self.layout)

    def to(self, device) -> Batch:
        return Batch(**{f.name: getattr(self, f.name).to(device) for f in fields(self) if f.name != "layout"},
                     layout=self.layout)

    def trimmed(self) -> Batch:
        """The batch without its all-padding columns at the end (rows cut out of a batch padded to its longest)."""
        used = (self.segment_id >= 0).any(0)
        width = int(used.nonzero().max()) + 1 if used.any() else 1
        if width == self.tokens.shape[1]:
            return self
        return Batch(**{f.name: getattr(self, f.name)[:, :width] for f in fields(self) if f.name != "layout"},
                     layout=self.layout)

    def attention_mask(self) -> torch.Tensor:
        """(B, 1, T, T) bool, True = may attend: causal, within the same conversation segment.

        Padding queries attend to nothing here; `GPT.forward` adds the diagonal (a query always sees itself)."""
        T = self.tokens.shape[1]
        causal = torch.ones(T, T, dtype=torch.bool, device=self.tokens.device).tril()
        same = self.segment_id[:, :, None] == self.segment_id[:, None, :]
        mask = same & causal & (self.segment_id[:, None, :] >= 0)
        return mask[:, None]

    def model_inputs(self) -> dict:
        """Keyword arguments for `GPT.forward`: inputs, targets (IGNORE_INDEX off the loss mask), positions, mask."""
        targets = torch.where(self.loss_mask[:, 1:], self.tokens[:, 1:], IGNORE_INDEX)
        attn = self.attention_mask()[:, :, :-1, :-1] if self.layout == "packed" else None
        return dict(idx=self.tokens[:, :-1], targets=targets, positions=self.position[:, :-1], attn_mask=attn)


def token_losses(model, batch: Batch) -> torch.Tensor:
    """Per-token cross-entropy on the batch's own grid (B, T): entry [b, t] is the loss of predicting token t."""
    _, loss = model(**batch.model_inputs())
    return F.pad(loss, (1, 0))


def _rendered(conversations, tokenizer=None) -> list[RenderedChat]:
    """Conversations through the chat template: the byte template, or `tokenizer` (a ChatTokenizer or a
    tokenizer directory, see hf_tokenizer); already rendered chats pass through."""
    tokenizer, conversations = as_tokenizer(tokenizer), list(conversations)
    slow = tokenizer is not None and len(conversations) >= 2000  # a few ms per chat through a Jinja template
    chats, total = [], 0
    for index, c in enumerate(tqdm(conversations, desc="render", disable=not slow, leave=False)):
        chat = c if isinstance(c, RenderedChat) else tokenizer.render(c) if tokenizer else render(c)
        total += len(chat)
        if total > MAX_TOKENS:  # stop as soon as they pass the bound, before the layout allocates anything
            raise SizeLimitError(f"{_where(chat, index)}: the conversations so far render to {total:,} tokens, "
                                 f"more than the limit of {MAX_TOKENS:,} per layout; use fewer or shorter ones")
        chats.append(chat)
    if len({c.pad_token for c in chats}) > 1:
        raise ValueError("the conversations were rendered by different tokenizers (their pad ids differ)")
    return chats


def _where(chat: RenderedChat, index: int) -> str:
    return chat.origin or f"conversation {index}"


def _check_length(chat: RenderedChat, index: int, n_tokens: int, limit: int | None, what: str) -> None:
    if limit is not None and n_tokens > limit:
        raise ChatFormatError(
            _where(chat, index), None, "messages", f"{what} has {n_tokens} tokens, longer than the limit of "
            f"{limit} (raise the row length / context, or drop or shorten this conversation)")


class _RowBuilder:
    """Collects labelled rows, then pads them into a Batch."""

    def __init__(self, pad_token: int):
        self.rows: list[dict[str, list[int]]] = []
        self.pad_token = pad_token

    def new_row(self) -> None:
        self.rows.append({k: [] for k in ("tokens", "loss_mask", "sample_id", "conversation_id", "turn_id",
                                          "turn_in_conversation", "role", "segment_id", "position")})

    def add(self, chat: RenderedChat, end: int, *, loss_turn: int | None, sample: int, conversation: int,
            turn_offset: int, segment: int) -> None:
        """Append chat.tokens[:end] to the current row; loss on turn `loss_turn` only, or on all turns if None."""
        row = self.rows[-1]
        for t in range(end):
            tj = chat.turn[t]
            row["tokens"].append(chat.tokens[t])
            row["loss_mask"].append(int(chat.loss_mask[t] and (loss_turn is None or tj == loss_turn)))
            row["sample_id"].append(sample)
            row["conversation_id"].append(conversation)
            row["turn_id"].append(turn_offset + tj if tj >= 0 else -1)
            row["turn_in_conversation"].append(tj)
            row["role"].append(chat.role[t])
            row["segment_id"].append(segment)
            row["position"].append(t)

    def build(self, layout: str, row_len: int | None = None) -> Batch:
        T = row_len or max((len(r["tokens"]) for r in self.rows), default=1)
        if len(self.rows) * T > MAX_SLOTS:
            hint = ("choose a smaller row length (--row-len)" if layout == "packed" else
                    "pack them (--format packed) to drop the padding, or drop the longest conversation")
            raise SizeLimitError(f"the {layout} layout would be {len(self.rows):,} rows × {T:,} tokens = "
                                 f"{len(self.rows) * T:,} slots, more than the limit of {MAX_SLOTS:,}; {hint}")
        pad_value = {"tokens": self.pad_token, "loss_mask": 0, "role": ROLE_CODES["pad"], "position": 0}
        arrays = {}
        for key in self.rows[0] if self.rows else ():
            arr = np.full((len(self.rows), T), pad_value.get(key, -1), dtype=np.int64)
            for i, r in enumerate(self.rows):
                arr[i, : len(r[key])] = r[key]
            arrays[key] = torch.from_numpy(arr)
        if not arrays:
            raise ValueError("no conversations to lay out")
        arrays["loss_mask"] = arrays["loss_mask"].bool()
        return Batch(**arrays, layout=layout)


def split_layout(conversations, max_len: int | None = None, tokenizer=None) -> Batch:
    """Format A: one row per assistant turn, holding the whole prefix; loss on that turn only.

    With a `tokenizer`, each turn's row is its prefix rendered on its own (what inference sees), which differs from
    a slice of the whole rendering where the template rewrites earlier turns."""
    conversations, tokenizer = list(conversations), as_tokenizer(tokenizer)
    chats = _rendered(conversations, tokenizer)
    rows = _RowBuilder(chats[0].pad_token if chats else 0)
    sample, turn_offset = 0, 0
    for c, (conv, chat) in enumerate(zip(conversations, chats)):
        for j in range(chat.n_turns):
            own = tokenizer.render_turn(conv, j) if tokenizer and not isinstance(conv, RenderedChat) else chat
            end = own.turn_end(j)
            _check_length(own, c, end, max_len, f"assistant turn {j} with its prefix")
            rows.new_row()
            rows.add(own, end, loss_turn=j, sample=sample, conversation=c, turn_offset=turn_offset, segment=0)
            sample += 1
        turn_offset += chat.n_turns
    return rows.build("split")


def multiturn_layout(conversations, max_len: int | None = None, tokenizer=None) -> Batch:
    """Format B: one row per conversation, loss on every assistant turn."""
    chats = _rendered(conversations, tokenizer)
    rows = _RowBuilder(chats[0].pad_token if chats else 0)
    turn_offset = 0
    for c, chat in enumerate(chats):
        _check_length(chat, c, len(chat), max_len, "the conversation")
        rows.new_row()
        rows.add(chat, len(chat), loss_turn=None, sample=c, conversation=c, turn_offset=turn_offset, segment=0)
        turn_offset += chat.n_turns
    return rows.build("multiturn")


def packed_layout(conversations, row_len: int | None = None, tokenizer=None) -> Batch:
    """Conversations packed in order into rows of `row_len` tokens (default: the longest conversation)."""
    chats = _rendered(conversations, tokenizer)
    rows = _RowBuilder(chats[0].pad_token if chats else 0)
    row_len = row_len or max(len(c) for c in chats)
    turn_offset, filled, segment = 0, row_len, 0
    for c, chat in enumerate(chats):
        _check_length(chat, c, len(chat), row_len, "the conversation")
        if filled + len(chat) > row_len:
            rows.new_row()
            filled, segment = 0, 0
        rows.add(chat, len(chat), loss_turn=None, sample=c, conversation=c, turn_offset=turn_offset,
                 segment=segment)
        filled, segment, turn_offset = filled + len(chat), segment + 1, turn_offset + chat.n_turns
    return rows.build("packed", row_len)


def packed_causal_layout(conversations, row_len: int | None = None, tokenizer=None) -> Batch:
    """`packed_layout`'s rows without the boundaries: positions 0..row_len-1 along the row and (through
    layout="packed-causal") plain causal attention, so tokens see the earlier conversations of their row."""
    batch = packed_layout(conversations, row_len, tokenizer)
    running = torch.arange(batch.tokens.shape[1]).expand_as(batch.tokens)
    return replace(batch, position=torch.where(batch.segment_id >= 0, running, 0), layout=CONTAMINATED)


def rows_as_samples(batch: Batch) -> Batch:
    """The batch with each row one sample (sample id = row on its used slots): what a loss that sees only the loss
    mask does with packed rows (OpenRLHF before PR #923, tunix before PR #1662). seq-mean-token-mean of it is the
    per-row mean, 1 / (rows · loss tokens of the row): token-mean within a row, sample-mean across rows (E9)."""
    rows = torch.arange(batch.tokens.shape[0])[:, None].expand_as(batch.sample_id)
    return replace(batch, sample_id=torch.where(batch.segment_id >= 0, rows, -1))


def make_layout(conversations, layout: str, *, max_len: int | None = None, row_len: int | None = None,
                tokenizer=None) -> Batch:
    """Dispatch by name: split | multiturn | packed | packed-causal; `tokenizer`: None (the byte template) or a
    ChatTokenizer or tokenizer directory (hf_tokenizer)."""
    if layout == "split":
        return split_layout(conversations, max_len, tokenizer)
    if layout == "multiturn":
        return multiturn_layout(conversations, max_len, tokenizer)
    if layout == "packed":
        return packed_layout(conversations, row_len or max_len, tokenizer)
    if layout == CONTAMINATED:
        return packed_causal_layout(conversations, row_len or max_len, tokenizer)
    raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(ALL_LAYOUTS)}")


def completion_batch(lengths, *, masked=(), prompt: str = "?") -> Batch:
    """An RL-style batch: row i holds one prompt and a completion of `lengths[i]` loss tokens (its text and the
    closing <|eot|>; lengths >= 1). Rows listed in `masked` keep their tokens but lose every loss token, like a
    truncated completion under TRL's `mask_truncated_completions`."""
    from .chats import conversation

    if any(int(n) < 1 for n in lengths):
        raise ValueError(f"completion lengths {list(lengths)}: each must be >= 1 (the <|eot|> is one token)")
    chats = [conversation(("user", prompt), ("assistant", "abcdefghijklmnopqrstuvwxyz"[i % 26] * (int(n) - 1)))
             for i, n in enumerate(lengths)]
    batch = multiturn_layout(chats)
    if len(masked):
        batch.loss_mask[torch.as_tensor(list(masked), dtype=torch.long)] = False
    return batch


def layout_waste(batch: Batch) -> dict:
    """How much compute a layout spends per loss token."""
    slots = batch.tokens.numel()
    tokens = int((batch.segment_id >= 0).sum())
    loss_tokens = int(batch.loss_mask.sum())
    return {
        "layout": batch.layout,
        "rows": batch.tokens.shape[0],
        "row_len": batch.tokens.shape[1],
        "slots": slots,
        "tokens": tokens,
        "loss_tokens": loss_tokens,
        "padding_fraction": 1 - tokens / slots,
        "tokens_per_loss_token": tokens / max(loss_tokens, 1),
        "slots_per_loss_token": slots / max(loss_tokens, 1),
    }
