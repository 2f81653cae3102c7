"""Synthetic multi-turn chats whose response lengths the learner controls.

Every reply is a deterministic function of the user message, so a tiny GPT can learn it and accuracy per
response-length bucket can be measured:

    user: "copy qhxk"  -> assistant: "qhxk"
    user: "rev qhxk"   -> assistant: "kxhq"
    user: "next qhxk"  -> assistant: "riyl"   (each letter shifted by one)

`make_noisy_tail_chats` (E8): "say 7 ...." -> "7" + random letters, one informative token and a noisy tail.

The branch task of docs/science.md E1/E4: user "pick" -> "S" + 3 letters (5 loss tokens with <|eot|>) or
"L" + 58 letters (60 loss tokens); only the first reply token is random, the rest is fixed.
Everything is drawn from `random.Random(seed)`, so a seed gives byte-identical data on every platform.
"""

from __future__ import annotations

import math
import random
import string
import warnings
from dataclasses import asdict, dataclass

from .chats import Conversation, Message
from .errors import InputWarning
from .tokenizer import render

TASKS = ("copy", "rev", "next")
FAMILIES = ("fixed", "uniform", "lognormal", "bimodal")
LETTERS = string.ascii_lowercase
SYSTEM_PROMPTS = ("You are a helpful assistant.", "Answer exactly.", "Follow the instruction.")
BRANCH_PROMPT = "pick"
BRANCH_SHORT_LEN, BRANCH_LONG_LEN = 5, 60  # loss tokens of the two branch replies, <|eot|> included


def answer(task: str, letters: str) -> str:
    """The one right reply to `task letters`."""
    if task == "copy":
        return letters
    if task == "rev":
        return letters[::-1]
    if task == "next":
        return "".join(LETTERS[(LETTERS.index(c) + 1) % 26] for c in letters)
    raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")


@dataclass(frozen=True)
class LengthSpec:
    """Distribution of assistant-response lengths, in characters (loss tokens = length + 1 for <|eot|>).

    family: fixed (always `mean`), uniform (`low`..`high`), lognormal (median `mean`, spread `sigma`),
    bimodal (`short_mean` or, with probability `long_fraction`, `long_mean`; each ±25%).
    turn_growth: per-turn schedule, turn j's length is multiplied by turn_growth**j (>1: later turns longer).
    """

    family: str = "bimodal"
    mean: float = 8.0
    low: int = 1
    high: int = 16
    sigma: float = 0.5
    short_mean: float = 4.0
    long_mean: float = 24.0
    long_fraction: float = 0.25
    turn_growth: float = 1.0
    max_len: int = 60

    def __post_init__(self):
        problems = []
        if self.family not in FAMILIES:
            problems.append(f"family={self.family!r} (choose one of {', '.join(FAMILIES)})")
        for name in ("mean", "short_mean", "long_mean", "turn_growth"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                problems.append(f"{name}={value!r} (must be a finite number > 0)")
        if not (math.isfinite(self.sigma) and self.sigma >= 0):
            problems.append(f"sigma={self.sigma!r} (must be >= 0)")
        if not (0.0 <= self.long_fraction <= 1.0):
            problems.append(f"long_fraction={self.long_fraction!r} (must be in [0, 1])")
        if not (1 <= self.low <= self.high):
            problems.append(f"low={self.low!r}, high={self.high!r} (need 1 <= low <= high)")
        if self.max_len < 1:
            problems.append(f"max_len={self.max_len!r} (must be >= 1)")
        if problems:
            raise ValueError("LengthSpec: " + "; ".join(problems))

    def sample(self, rng: random.Random, turn: int = 0) -> int:
        """One response length (characters) for assistant turn `turn` (0-based)."""
        if self.family == "fixed":
            x = self.mean
        elif self.family == "uniform":
            x = rng.randint(self.low, self.high)
        elif self.family == "lognormal":
            x = self.mean * math.exp(self.sigma * rng.gauss(0.0, 1.0))
        else:
            centre = self.long_mean if rng.random() < self.long_fraction else self.short_mean
            x = centre * rng.uniform(0.75, 1.25)
        x *= self.turn_growth**turn
        return int(min(max(round(x), 1), self.max_len))

    def to_dict(self) -> dict:
        return asdict(self)


def _session(rng: random.Random, task: str, length: int) -> tuple[Message, Message]:
    letters = "".join(rng.choice(LETTERS) for _ in range(length))
    return Message("user", f"{task} {letters}"), Message("assistant", answer(task, letters))


def make_chats(
    n: int,
    *,
    lengths: LengthSpec = LengthSpec(),
    turns: tuple[int, int] = (1, 3),
    system_prompt_prob: float = 0.5,
    tasks: tuple[str, ...] = TASKS,
    max_tokens: int | None = 128,
    seed: int = 0,
) -> list[Conversation]:
    """`n` conversations of turns[0]..turns[1] user/assistant sessions, replies sized by `lengths`.

    With max_tokens, sessions that would push the rendered conversation past it are dropped (the first one is
    shortened instead), so every conversation fits a model of that context.
    """
    lo, hi = turns
    if not (1 <= lo <= hi):
        raise ValueError(f"turns={turns!r}: need 1 <= min <= max")
    if not 0.0 <= system_prompt_prob <= 1.0:
        raise ValueError(f"system_prompt_prob={system_prompt_prob!r}: must be in [0, 1]")
    for task in tasks:
        answer(task, "")
    rng = random.Random(seed)
    chats = []
    for _ in range(n):
        messages: list[Message] = []
        if rng.random() < system_prompt_prob:
            messages.append(Message("system", rng.choice(SYSTEM_PROMPTS)))
        used = len(render(Conversation(tuple(messages))))
        for turn in range(rng.randint(lo, hi)):
            task, length = rng.choice(tasks), lengths.sample(rng, turn)
            if max_tokens is not None:
                room = (max_tokens - used - len(task) - 5) // 2  # a session renders to 2*length + len(task) + 5
                if room < length and turn > 0:
                    break
                if room < 1:
                    raise ValueError(f"max_tokens={max_tokens} is too small for even one session")
                length = min(length, room)
            messages += _session(rng, task, length)
            used += 2 * length + len(task) + 5
        chats.append(Conversation(tuple(messages)))
    return chats


def branch_reply(long: bool, short_len: int = BRANCH_SHORT_LEN, long_len: int = BRANCH_LONG_LEN) -> str:
    """The branch reply of `long_len` (or `short_len`) loss tokens with its <|eot|>: "L" (or "S") and letters
    ("Sxyz", "Labc…" by default)."""
    length = long_len if long else short_len
    if isinstance(length, bool) or not isinstance(length, int) or length < 2:
        raise ValueError(f"{'long' if long else 'short'}_len={length!r}: a branch reply needs an integer >= 2 "
                         "loss tokens (its first letter and <|eot|>)")
    return ("L" + LETTERS * (length // 26 + 1) if long else "S" + "xyz" * (length // 3 + 1))[:length - 1]


BRANCH_SHORT, BRANCH_LONG = branch_reply(False), branch_reply(True)  # "Sxyz" (5 loss tokens), "Labc…" (60)


def make_branch_chats(
    n: int,
    *,
    long_fraction: float = 0.2,
    context_turns: int = 0,
    context_len: int = 4,
    short_len: int = BRANCH_SHORT_LEN,
    long_len: int = BRANCH_LONG_LEN,
    seed: int = 0,
) -> list[Conversation]:
    """The branch task (docs/science.md E1, E4): after `context_turns` copy sessions of `context_len` letters,
    the user says "pick" and the reply is long (`long_len` loss tokens) with probability `long_fraction`, else
    short (`short_len`)."""
    if not 0.0 <= long_fraction <= 1.0:
        raise ValueError(f"long_fraction={long_fraction!r}: must be in [0, 1]")
    replies = (branch_reply(False, short_len, long_len), branch_reply(True, short_len, long_len))
    rng = random.Random(seed)
    chats = []
    for _ in range(n):
        messages = []
        for _ in range(context_turns):
            messages += _session(rng, "copy", context_len)
        long = rng.random() < long_fraction
        messages += [Message("user", BRANCH_PROMPT), Message("assistant", replies[long])]
        chats.append(Conversation(tuple(messages)))
    return chats


def make_noisy_tail_chats(n: int, *, lengths: LengthSpec = LengthSpec("lognormal", mean=10, sigma=0.8, max_len=56),
                          seed: int = 0) -> list[Conversation]:
    """One informative token per reply, then pure noise (docs/science.md E8): the user says "say d ....." (a digit
    and k dots), the reply is d + k random letters. Only d carries signal; the letters cannot be predicted, so each
    adds gradient noise and no signal, as the tokens of a long RL response do under one sequence-level reward
    (ΔL Normalization's model). The dots let the model time <|eot|>."""
    rng = random.Random(seed)
    chats = []
    for _ in range(n):
        k, digit = lengths.sample(rng), str(rng.randrange(10))
        tail = "".join(rng.choice(LETTERS) for _ in range(k))
        chats.append(Conversation((Message("user", f"say {digit} {'.' * k}"), Message("assistant", digit + tail))))
    return chats


def is_long_branch(conv: Conversation) -> bool:
    """Whether the last reply of a branch chat took the long branch."""
    return conv.messages[-1].content.startswith("L")


# The shipped datasets: name -> how to make it. `python -m lossreduce_demo make-data` writes them to data/.
DEFAULT_LENGTHS = LengthSpec()
SHIPPED = {
    "default_chats.jsonl": lambda: make_chats(256, lengths=DEFAULT_LENGTHS, seed=0),
    "e1_branch.jsonl": lambda: make_branch_chats(512, long_fraction=0.2, seed=1),
    "e4_branch_multiturn.jsonl": lambda: make_branch_chats(512, long_fraction=0.2, context_turns=2, seed=2),
    "george_washington.jsonl": lambda: [GEORGE_WASHINGTON],
}

GEORGE_WASHINGTON = Conversation((
    Message("system", "You are a helpful history tutor."),
    Message("user", "Who was George Washington?"),
    Message("assistant", "The first president of the United States."),
    Message("user", "When was he born?"),
    Message("assistant", "On 22 February 1732, in Virginia."),
    Message("user", "What did he do before he became president?"),
    Message("assistant", "He led the Continental Army in the War of Independence and chaired the "
                         "Constitutional Convention of 1787."),
))


def write_shipped(out_dir) -> list:
    """Write every shipped dataset to `out_dir` (the generator behind data/), then the shipped tokenizer
    (hf_tokenizer.SHIPPED_TOKENIZER, trained on default_chats; needs the [frameworks] extra)."""
    from pathlib import Path

    from .chats import save_chats
    from .hf_tokenizer import SHIPPED_TOKENIZER, FrameworksMissing, write_shipped_tokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [save_chats(make(), out_dir / name) for name, make in SHIPPED.items()]
    try:
        written.append(write_shipped_tokenizer(out_dir, SHIPPED["default_chats.jsonl"]()))
    except FrameworksMissing as error:
        warnings.warn(InputWarning(f"{out_dir / SHIPPED_TOKENIZER} not written: {error}"), stacklevel=2)
    return written
