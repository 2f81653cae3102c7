"""Group-relative policy gradient on a toy policy: where GRPO's per-sequence mean adds a length bias (E6, E7).

The tiny GPT answers one prompt with a response made from a few *templates*. The first response token is the
template's marker (the policy's decision); the rest follows the template (fixed text, or random letters for
gibberish) and ends with <|eot|>. Rewards depend on the template only.

Every step samples `groups` groups of `group_size` responses to the prompt (on-policy), turns rewards into
advantages (GRPO: (r - mean)/std within the group; Dr. GRPO: r - mean) and minimises

    J = sum_t w_t * l_t,   l_t = -min(rho_t A, clip(rho_t, 1-eps, 1+eps) A),   rho_t = pi(o_t) / pi_old(o_t)

where w is the reduction scheme's weight map from `lossreduce_demo.reductions` (the same maths as SFT):
seq-mean-token-mean (GRPO, w = 1/(B n_i)), token-mean (DAPO, w = 1/N), seq-mean-token-sum-norm (Dr. GRPO,
w = 1/(B L_max)). With 1/n_i a wrong 30-token response spreads its penalty over 30 tokens, so its decision
token is pushed down 10x less than a wrong 3-token one's: long wrong answers survive (DAPO §3.3).

Two design choices keep the toy's own geometry from adding a length bias of its own (measured, see the README):
the policy's output head is untied from its input embedding (`GPTConfig(tie_head=False)`) (tied, a marker's output row is also the input
embedding that must predict its template's continuation, so long and short markers end up with gradients of
different size), and no marker character occurs in any template's text (else rewarding that text also moves
the marker's logit).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import ratios
from .config import pick
from .layouts import Batch, multiturn_layout
from .model import GPT, GPTConfig, KVCache
from .reductions import Scheme, token_weights
from .tokenizer import ASSISTANT, BOS, EOT, PAD, ROLE_CODES, USER, RenderedChat, decode, encode

LETTERS = "abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class Template:
    """One kind of response: marker + body + answer + <|eot|>, `length` tokens in all."""

    name: str
    marker: str  # first response character: the policy's decision
    length: int  # response tokens, <|eot|> included
    reward: float
    correct: bool
    share: float  # fraction of the warm-start (SFT) data
    body: str = ""  # fixed filler text; empty with random_body
    random_body: bool = False  # filler is random letters (gibberish)
    answer: str = "5"

    def __post_init__(self):
        if self.length < 3:
            raise ValueError(f"template {self.name}: length {self.length} < 3 (marker, answer, <|eot|>)")
        if not self.random_body and len(self.body) < self.length - 3:
            raise ValueError(f"template {self.name}: body text shorter than {self.length - 3} characters")

    def text(self, rng: np.random.Generator | None = None) -> str:
        n = self.length - 3
        if self.random_body:
            rng = rng if rng is not None else np.random.default_rng()
            filler = "".join(rng.choice(list(LETTERS), size=n))
        else:
            filler = self.body[:n]
        return self.marker + filler + self.answer


@dataclass(frozen=True)
class Task:
    """A prompt, its templates and which pairs the length-bias ratios compare."""

    name: str
    prompt: str
    templates: tuple[Template, ...]
    long_wrong: str
    short_wrong: str
    long_right: str | None = None
    short_right: str | None = None

    def __post_init__(self):
        if not math.isclose(sum(t.share for t in self.templates), 1.0, abs_tol=1e-9):
            raise ValueError(f"task {self.name}: template shares must sum to 1")
        if len({t.marker for t in self.templates}) != len(self.templates):
            raise ValueError(f"task {self.name}: template markers must differ")
        for t in self.templates:
            text = set(LETTERS if t.random_body else t.body[:t.length - 3]) | set(t.answer)
            for m in self.templates:
                if m.marker in text:
                    raise ValueError(f"task {self.name}: marker {m.marker!r} of {m.name} occurs in the text of "
                                     f"{t.name}; markers must not occur in any template's text")

    @property
    def budget(self) -> int:
        """Generation budget L_max: the longest template."""
        return max(t.length for t in self.templates)

    def template(self, name: str) -> Template:
        return next(t for t in self.templates if t.name == name)

    @property
    def prompt_tokens(self) -> list[int]:
        return [BOS, USER] + encode(self.prompt) + [EOT, ASSISTANT]


_WRONG = "hmm, I guess it is probably seven or so, maybe, I am not sure at all"
_RIGHT = "2 plus 3: count 3, 4, 5 so the sum is five, answer"

# E6, the DAPO analogue: 40% GUESS (3 tokens, 0.1), 40% GIBBERISH (30 tokens, 0.1), 20% REASON (10 tokens, 0.8).
E6_TASK = Task("e6", "2+3=?", (
    Template("GUESS", "G", 3, 0.1, False, 0.4, answer="7"),
    Template("GIBBERISH", "J", 30, 0.1, False, 0.4, random_body=True, answer="7"),
    Template("REASON", "R", 10, 0.8, True, 0.2, body=_RIGHT),
), long_wrong="GIBBERISH", short_wrong="GUESS")

# E7, Dr. GRPO: short/long x wrong/right, equal shares. Markers x (cross) / v (tick), upper case for long.
E7_TASK = Task("e7", "2+3=?", (
    Template("short-wrong", "x", 3, 0.2, False, 0.25, answer="7"),
    Template("long-wrong", "X", 30, 0.2, False, 0.25, body=_WRONG, answer="7"),
    Template("short-right", "v", 6, 0.8, True, 0.25, body="sum"),
    Template("long-right", "V", 20, 0.8, True, 0.25, body=_RIGHT),
), long_wrong="long-wrong", short_wrong="short-wrong", long_right="long-right", short_right="short-right")

TASKS = {"e6": E6_TASK, "e7": E7_TASK}

# name -> (reduction scheme, advantage, SGD learning rate): the three recipes compared. Plain SGD keeps the
# weight map's scale in the update (as in E5, its learning rate absorbs the loss's overall scale: Dr. GRPO's
# 1/(B L_max) and un-normalised advantages are ~10x smaller), so each recipe's rate is set to reach 80% right
# answers in a similar number of steps; comparisons are made at matched reward anyway.
ALGORITHMS = {
    "GRPO": ("seq-mean-token-mean", "grpo", 0.02),
    "DAPO": ("token-mean", "grpo", 0.03),
    "Dr. GRPO": ("seq-mean-token-sum-norm", "dr_grpo", 0.2),
}
ADVANTAGES = ("grpo", "dr_grpo")
RATIO_RULES = ("token", "gspo", "cispo")  # lossreduce_demo.ratios (E10)
# Adam divides each parameter's update by its own running RMS, so the weight map's overall scale (Σw) no longer sets
# the step size (as in E5): one learning rate serves every recipe. What else it changes: README, notebook 05.
ADAM_LR = 1e-3

POLICY_CONFIG = GPTConfig(context_len=48, n_layer=2, n_head=4, d_model=64, tie_head=False)  # TINY, short context


@dataclass(frozen=True)
class RLConfig:
    scheme: str = "seq-mean-token-mean"  # reduction of the per-token policy-gradient loss
    advantage: str = "grpo"  # grpo: (r - mean)/std; dr_grpo: r - mean
    steps: int = 50  # RL steps (one fresh on-policy batch each)
    groups: int = 8  # prompts (groups) per step
    group_size: int = 8  # G: responses per prompt
    lr: float = 0.02  # learning rate
    optimizer: str = "sgd"  # sgd, or adam (AdamW without weight decay; README: what Adam changes)
    updates_per_batch: int = 1  # >1: PPO-style re-use of a batch, with ratio clipping
    clip_eps: float = 0.2  # PPO ratio clip (the lower bound 1 - clip_eps; CISPO: math.inf = none)
    clip_eps_high: float | None = None  # GSPO / CISPO upper bound 1 + clip_eps_high (None: clip_eps)
    ratio: str = "token"  # token: PPO clip per token; gspo: one ratio per response; cispo: clipped weight (E10)
    temperature: float = 1.0

    def __post_init__(self):
        Scheme(self.scheme)  # validates the name
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose sgd or adam")
        if self.advantage not in ADVANTAGES:
            raise ValueError(f"unknown advantage {self.advantage!r}; choose one of {', '.join(ADVANTAGES)}")
        if self.ratio not in RATIO_RULES:
            raise ValueError(f"unknown ratio {self.ratio!r}; choose one of {', '.join(RATIO_RULES)}")
        for name in ("steps", "groups", "group_size", "updates_per_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"RLConfig.{name} must be >= 1, got {getattr(self, name)}")


def algorithm_config(name: str, **overrides) -> RLConfig:
    """RLConfig of a named recipe (GRPO, DAPO, Dr. GRPO), with fast-mode defaults; `optimizer="adam"` without an
    `lr` uses ADAM_LR for every recipe."""
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; choose one of {', '.join(ALGORITHMS)}")
    scheme, advantage, lr = ALGORITHMS[name]  # fast mode: fewer, 2x larger steps
    lr = ADAM_LR if overrides.get("optimizer") == "adam" else lr
    base = RLConfig(scheme=scheme, advantage=advantage, lr=pick(lr, 2 * lr), steps=pick(50, 20), groups=8)
    return replace(base, **overrides)


# ---------------------------------------------------------------- maths


def group_advantages(rewards: torch.Tensor, kind: str = "grpo", eps: float = 1e-6) -> torch.Tensor:
    """(groups, G) rewards -> (groups, G) advantages. grpo: (r - mean)/(std + eps), std unbiased as in TRL;
    dr_grpo: r - mean. A group with equal rewards gets 0 everywhere."""
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be (groups, G) with G >= 2, got shape {tuple(rewards.shape)}")
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    tied = (rewards == rewards[:, :1]).all(dim=1, keepdim=True)  # the mean's rounding must not become signal
    centred = centred.masked_fill(tied, 0.0)
    if kind == "dr_grpo":
        return centred
    if kind == "grpo":
        return centred / (rewards.std(dim=1, keepdim=True) + eps)
    raise ValueError(f"unknown advantage {kind!r}; choose one of {', '.join(ADVANTAGES)}")


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """(..., V) logits -> (...) entropy of the next-token distribution, in nats."""
    logq = F.log_softmax(logits, dim=-1)
    return -(logq.exp() * logq).sum(-1)


def response_batch(prompt: list[int], responses: list[list[int]]) -> Batch:
    """Prompt + response rows as a format-B `layouts.Batch`: one sample (and turn) per response, loss on it."""
    n = len(prompt)
    roles = [ROLE_CODES["bos"]] + [ROLE_CODES["user"]] * (n - 1)
    return multiturn_layout([RenderedChat(prompt + r, roles + [ROLE_CODES["assistant"]] * len(r),
                                          [-1] * n + [0] * len(r), [0] * n + [1] * len(r)) for r in responses])


def rl_token_weights(batch: Batch, scheme: str, l_max: float) -> torch.Tensor:
    """(B, T) float32 weights of the policy-gradient loss (L_max = generation budget for the constant norm)."""
    return token_weights(batch, Scheme(scheme, l_max=float(l_max))).float()


def weights_by_template(task: Task, schemes=None, counts: dict | None = None) -> pd.DataFrame:
    """Per-token weight each template's tokens get in one group under each scheme (the package's weight maps).

    counts: responses per template in the group (default: the warm-start shares of a group of 8)."""
    schemes = schemes or [spec[0] for spec in ALGORITHMS.values()]
    if counts is None:
        counts = {t.name: max(1, round(8 * t.share)) for t in task.templates}
    responses, names = [], []
    for t in task.templates:
        for _ in range(counts.get(t.name, 0)):
            responses.append(encode(t.text(np.random.default_rng(0))) + [EOT])
            names.append(t.name)
    if not responses:
        raise ValueError("counts has no responses")
    batch = response_batch(task.prompt_tokens, responses)
    rows = []
    for scheme in schemes:
        w = token_weights(batch, Scheme(scheme, l_max=float(task.budget)))  # float64
        for i, name in enumerate(names):
            if name in names[:i]:
                continue
            per_token = float(w[i][batch.loss_mask[i]][0])
            rows.append(dict(scheme=scheme, template=name, length=len(responses[i]), weight_per_token=per_token,
                             weight_per_response=per_token * len(responses[i]),
                             relative_to_shortest=np.nan))
    frame = pd.DataFrame(rows)
    shortest = frame.loc[frame.groupby("scheme")["length"].idxmin(), ["scheme", "weight_per_token"]]
    ref = dict(zip(shortest["scheme"], shortest["weight_per_token"]))
    frame["relative_to_shortest"] = frame["weight_per_token"] / frame["scheme"].map(ref)
    return frame


def templates_table(task: Task) -> pd.DataFrame:
    """One row per template: marker, length, reward, share of the warm start and an example response."""
    rng = np.random.default_rng(0)
    return pd.DataFrame([dict(template=t.name, marker=t.marker, length=t.length, reward=t.reward, correct=t.correct,
                              warm_start_share=t.share, example=decode(encode(t.text(rng)) + [EOT]))
                         for t in task.templates])


# ---------------------------------------------------------------- policy


def new_policy(seed: int, config: GPTConfig = POLICY_CONFIG) -> GPT:
    torch.manual_seed(seed)
    return GPT(config)


def warm_start(task: Task, seed: int, steps: int | None = None, batch_size: int = 20, lr: float = 5e-3,
               config: GPTConfig = POLICY_CONFIG) -> GPT:
    """SFT the policy on template responses with exactly the task's shares in every batch (token-mean, so the
    first token learns the shares; cosine decay so it lands on them and the fixed text becomes near-certain).
    Seeded: model init and gibberish letters. Cached: the same arguments return a fresh copy of the same policy."""
    steps = steps if steps is not None else pick(200, 100)
    key = (task, seed, steps, batch_size, lr, repr(config))
    if key not in _WARM_STARTS:
        _WARM_STARTS[key] = _warm_start(task, seed, steps, batch_size, lr, config)
    return copy.deepcopy(_WARM_STARTS[key])


_WARM_STARTS: dict = {}


def _warm_start(task: Task, seed: int, steps: int, batch_size: int, lr: float, config: GPTConfig) -> GPT:
    rng = np.random.default_rng(seed)
    policy = new_policy(seed, config)
    opt = torch.optim.AdamW(policy.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    per_batch = [t for t in task.templates for _ in range(round(batch_size * t.share))]
    for _ in tqdm(range(steps), desc=f"warm start {task.name} seed {seed}", leave=False):
        batch = response_batch(task.prompt_tokens, [encode(t.text(rng)) + [EOT] for t in per_batch])
        _, loss = policy(**batch.model_inputs())
        w = rl_token_weights(batch, "token-mean", task.budget)[:, 1:]
        opt.zero_grad(set_to_none=True)
        (w * loss).sum().backward()
        opt.step()
        sched.step()
    return policy


@torch.no_grad()
def template_probs(policy: GPT, task: Task) -> dict[str, float]:
    """Exact pi(template | prompt): the probability of each marker as the first response token."""
    logits, _ = policy(torch.tensor([task.prompt_tokens]))
    p = F.softmax(logits[0, -1].double(), dim=-1)
    return {t.name: float(p[encode(t.marker)[0]]) for t in task.templates}


@torch.no_grad()
def sample_responses(policy: GPT, task: Task, n: int, generator: torch.Generator,
                     temperature: float = 1.0) -> list[list[int]]:
    """n on-policy responses (batched, KV-cached), each up to <|eot|> included or cut at the generation budget."""
    was_training = policy.training
    policy.eval()
    cache = KVCache(len(policy.blocks))
    logits, _ = policy(torch.tensor([task.prompt_tokens]), cache=cache)  # the prompt is shared: run it once
    logits = logits[:, -1].expand(n, -1)  # (n, V) next-token logits
    cache.expand(n)
    out = torch.full((n, task.budget), PAD, dtype=torch.long)
    done = torch.zeros(n, dtype=torch.bool)
    for t in range(task.budget):
        probs = F.softmax(logits / temperature, dim=-1)
        nxt = torch.where(done, PAD, torch.multinomial(probs, 1, generator=generator).squeeze(1))
        out[:, t] = nxt
        done = done | (nxt == EOT)
        if bool(done.all()) or t == task.budget - 1:
            break
        logits = policy(nxt[:, None], cache=cache)[0][:, -1]  # one new token per row, against the cache
    policy.train(was_training)
    return [[int(x) for x in row if x != PAD] for row in out]


def classify(task: Task, response: list[int]) -> str:
    """Template of a response by its first token (the marker); 'other' if none matches (reward 0)."""
    first = decode(response[:1])
    return next((t.name for t in task.templates if t.marker == first), "other")


def reward_of(task: Task, name: str) -> float:
    return next((t.reward for t in task.templates if t.name == name), 0.0)


def _ratio(probs: dict, num: str | None, den: str | None) -> float:
    if num is None or den is None:
        return float("nan")
    return probs[num] / max(probs[den], 1e-12)


# ---------------------------------------------------------------- training


def rl_loss(logp: torch.Tensor, old_logp: torch.Tensor, batch: Batch, rewards: torch.Tensor, cfg: RLConfig,
            budget: int) -> torch.Tensor:
    """The RL loss of one batch of groups: advantages -> per-token policy-gradient loss -> the weight map.
    logp, old_logp: (B, T-1) log-probabilities of each next token now and when sampled; rewards: (B,), by group."""
    adv = group_advantages(rewards.view(-1, cfg.group_size), cfg.advantage).flatten()  # (B,)
    w = rl_token_weights(batch, cfg.scheme, budget)[:, 1:]  # (B, T-1): GRPO, DAPO or Dr. GRPO, 0 off responses
    if cfg.ratio != "token":  # E10: GSPO's sequence-level objective, or CISPO's clipped-weight loss
        mask, high = batch.loss_mask[:, 1:], cfg.clip_eps if cfg.clip_eps_high is None else cfg.clip_eps_high
        if cfg.ratio == "gspo":
            return ratios.gspo_loss(logp, old_logp, adv, mask, cfg.clip_eps, high)
        return (w * ratios.cispo_loss(logp, old_logp, adv, mask, high, cfg.clip_eps)).sum()
    per_token = ratios.clipped_surrogate(logp, old_logp, adv[:, None], cfg.clip_eps, cfg.clip_eps)  # (B, T-1)
    return (w * per_token).sum()


def rl_step(policy: GPT, opt: torch.optim.Optimizer, task: Task, cfg: RLConfig,
            generator: torch.Generator, on_update=None) -> dict:
    """One on-policy step: sample, score, advantages, weighted clipped PG loss, update. Returns metrics.
    `on_update(k, logp, old_logp, advantage, mask)` sees every update k = 1.. of the batch before its backward."""
    n = cfg.groups * cfg.group_size
    responses = sample_responses(policy, task, n, generator, cfg.temperature)
    names = [classify(task, r) for r in responses]
    rewards = torch.tensor([reward_of(task, k) for k in names], dtype=torch.float32)
    batch = response_batch(task.prompt_tokens, responses)
    old_logp = None
    if on_update is not None:  # the batch's advantages, for the hook (rl_loss derives the same from the rewards)
        adv = group_advantages(rewards.view(-1, cfg.group_size), cfg.advantage).flatten()
    for update in range(1, cfg.updates_per_batch + 1):  # > 1: PPO-style re-use of the batch, ratios clipped
        logits, ce = policy(**batch.model_inputs())
        logp = -ce  # (B, T-1) log pi of each next token; 0 off the responses
        if old_logp is None:  # the policy that sampled the batch
            old_logp, entropy = logp.detach(), token_entropy(logits.detach())
        if on_update is not None:
            on_update(update, logp.detach(), old_logp, adv, batch.loss_mask[:, 1:])
        loss = rl_loss(logp, old_logp, batch, rewards, cfg, task.budget)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    mask = batch.loss_mask[:, 1:]
    lengths = torch.tensor([len(r) for r in responses], dtype=torch.float32)
    right = torch.tensor([k in {t.name for t in task.templates if t.correct} for k in names])
    wrong_tok = mask & ~right[:, None]
    nan = float("nan")
    row = dict(
        mean_reward=float(rewards.mean()),
        mean_length=float(lengths.mean()),
        mean_length_right=float(lengths[right].mean()) if right.any() else nan,
        mean_length_wrong=float(lengths[~right].mean()) if (~right).any() else nan,
        entropy=float(entropy[mask].mean()),
        entropy_wrong=float(entropy[wrong_tok].mean()) if wrong_tok.any() else nan,
        loss=float(loss.detach()),
    )
    for t in task.templates:
        row[f"sampled_{t.name}"] = sum(k == t.name for k in names) / n
    return row


def policy_metrics(policy: GPT, task: Task) -> dict:
    """Exact template shares, expected reward and the length-bias ratios of the current policy."""
    probs = template_probs(policy, task)
    row = {f"share_{k}": v for k, v in probs.items()}
    row["share_right"] = sum(probs[t.name] for t in task.templates if t.correct)
    row["expected_reward"] = sum(probs[t.name] * t.reward for t in task.templates)
    row["long_short_wrong_ratio"] = _ratio(probs, task.long_wrong, task.short_wrong)
    row["long_short_right_ratio"] = _ratio(probs, task.long_right, task.short_right)
    return row


def make_optimizer(policy: GPT, cfg: RLConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=0.0)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(policy.parameters(), lr=cfg.lr)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; choose adam or sgd")


def train_policy(task: Task, cfg: RLConfig, seed: int, policy: GPT | None = None, callback=None,
                 progress: bool = True, on_update=None) -> pd.DataFrame:
    """RL from a warm-started policy (copied, never changed; default: `warm_start(task, seed)`).

    Returns tidy per-step metrics (step, metric, value); step 0 is the warm start. The row of step s holds the
    exact policy metrics after s updates and the sampled metrics of the batch that policy then drew.
    `callback(step, row, policy)` is called after every update with the row just completed (that of step - 1),
    for live plots."""
    policy = copy.deepcopy(policy if policy is not None else warm_start(task, seed))
    opt = make_optimizer(policy, cfg)
    generator = torch.Generator().manual_seed(seed + 10_000)
    torch.manual_seed(seed)
    rows = [dict(step=0, **policy_metrics(policy, task))]
    bar = tqdm(range(1, cfg.steps + 1), desc=f"{task.name} {cfg.scheme} seed {seed}", leave=False,
               disable=not progress)
    for step in bar:
        sampled = rl_step(policy, opt, task, cfg, generator, on_update)
        rows[-1].update(sampled)  # what the policy *before* the update produced
        rows.append(dict(step=step, **policy_metrics(policy, task)))
        if callback is not None:
            callback(step, rows[-2], policy)
    wide = pd.DataFrame(rows)
    long = wide.melt(id_vars="step", var_name="metric", value_name="value")
    long.insert(0, "scheme", cfg.scheme)
    long.insert(1, "advantage", cfg.advantage)
    long.insert(2, "seed", seed)
    return long


def ratio_by_parameters(start: GPT, trained: GPT, task: Task) -> dict[str, float]:
    """Where a change of π(long wrong)/π(short wrong) sits. The untied output head has one row per token: the two
    markers' rows are parameters only those decisions use; every other parameter is shared by all tokens. Returns
    the ratio before and after training, with only the two marker rows moved (the rest at `start`), with everything
    but them moved, and |Δ row(long marker)| / |Δ row(short marker)|. Under SGD the rows move in proportion to
    their gradients (GRPO: the long marker's ~10× smaller); Adam scales each parameter's step by its own RMS."""
    rows = [encode(task.template(name).marker)[0] for name in (task.long_wrong, task.short_wrong)]
    before, after = start.lm_head.weight.detach(), trained.lm_head.weight.detach()
    only_rows, all_but_rows = copy.deepcopy(start), copy.deepcopy(trained)
    with torch.no_grad():
        only_rows.lm_head.weight[rows] = after[rows]
        all_but_rows.lm_head.weight[rows] = before[rows]

    def ratio(policy):
        return policy_metrics(policy, task)["long_short_wrong_ratio"]

    moved = (after[rows] - before[rows]).norm(dim=1)
    return dict(ratio_start=ratio(start), ratio_trained=ratio(trained), ratio_marker_rows_only=ratio(only_rows),
                ratio_other_parameters_only=ratio(all_but_rows), marker_row_step_ratio=float(moved[0] / moved[1]))


def wide_metrics(table: pd.DataFrame) -> pd.DataFrame:
    """Tidy metrics -> one row per (run, step), one column per metric."""
    keys = [c for c in ("experiment", "algorithm", "scheme", "advantage", "seed") if c in table]
    wide = table.set_index(keys + ["step", "metric"])["value"].unstack("metric").reset_index()
    wide.columns.name = None
    return wide
