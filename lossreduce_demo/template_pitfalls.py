"""Three ways a chat template's loss mask goes wrong in real pipelines, each with a measurable consequence
(notebook 06, "your tokenizer"):

1. The end-of-turn token outside the mask: the model never learns to stop (`EOT_OUTSIDE_MASK_TEMPLATE`,
   `train_on_rows`, `p_stop_after_reply`).
2. The mask read on the inputs instead of the shifted labels: every trained token moves one to the right
   (`label_alignment`).
3. A template that strips earlier turns' reasoning: format A (each turn rendered as its own prompt, as inference
   sees it) and format B (one masked rendering of the conversation) train the same turn on different tokens, so the
   A ≡ B equivalences of the suite no longer hold (`HISTORY_STRIPPING_TEMPLATE`, `with_reasoning`,
   `turn_contexts`).
"""

from __future__ import annotations

import pandas as pd
import torch
from tqdm.auto import tqdm

from .chats import Conversation, Message
from .hf_tokenizer import CHATML_TEMPLATE, ChatTokenizer
from .layouts import Batch, token_losses
from .model import GPT, TINY, GPTConfig
from .reductions import token_weights

# 1. The reply is in the generation block, its <|im_end|> is not.
EOT_OUTSIDE_MASK_TEMPLATE = CHATML_TEMPLATE.replace(
    "{% generation %}{{- message['content'] + '<|im_end|>' -}}{% endgeneration %}{{- '\\n' -}}",
    "{% generation %}{{- message['content'] -}}{% endgeneration %}{{- '<|im_end|>\\n' -}}")

# 3. Qwen3-style: an assistant message before the last user message loses its <think>…</think>.
HISTORY_STRIPPING_TEMPLATE = (
    "{%- set ns = namespace(last_user=-1) -%}"
    "{%- for message in messages -%}{%- if message['role'] == 'user' -%}{%- set ns.last_user = loop.index0 -%}"
    "{%- endif -%}{%- endfor -%}"
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- set content = message['content'] -%}"
    "{%- if loop.index0 < ns.last_user and '</think>' in content -%}"
    "{%- set content = content.split('</think>')[-1] -%}{%- endif -%}"
    "{% generation %}{{- content + '<|im_end|>' -}}{% endgeneration %}{{- '\\n' -}}"
    "{%- else -%}{{- message['content'] + '<|im_end|>\\n' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def model_config(tokenizer: ChatTokenizer, base: GPTConfig = TINY) -> GPTConfig:
    """The tiny GPT sized for this tokenizer's vocabulary."""
    return GPTConfig(**{**vars(base), "vocab_size": tokenizer.vocab_size})


def train_on_rows(batch: Batch, config: GPTConfig, steps: int, lr: float = 3e-3, seed: int = 0) -> GPT:
    """The tiny GPT trained full-batch with token-mean on these rows (AdamW): enough to compare two masks."""
    if int(batch.tokens.max()) >= config.vocab_size:
        raise ValueError(f"the rows hold token id {int(batch.tokens.max())} but the model's vocab_size is "
                         f"{config.vocab_size}: size it by the tokenizer, model_config(tokenizer)")
    torch.manual_seed(seed)
    model = GPT(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    weights = token_weights(batch, "token-mean").float()
    for _ in tqdm(range(steps), desc="train", leave=False):
        optimizer.zero_grad()
        (weights * token_losses(model, batch)).sum().backward()
        optimizer.step()
    return model.eval()


@torch.no_grad()
def p_stop_after_reply(model: GPT, batch: Batch, eot_token: int) -> float:
    """Mean probability the model gives the end-of-turn token right after each assistant reply of `batch`
    (rows rendered with the end-of-turn token in the mask, so the positions are known)."""
    logits, _ = model(**{k: v for k, v in batch.model_inputs().items() if k != "targets"})
    is_stop = batch.loss_mask[:, 1:] & (batch.tokens[:, 1:] == eot_token)
    return float(logits.softmax(-1)[..., eot_token][is_stop].mean())


def label_alignment(batch: Batch, eot_token: int) -> pd.DataFrame:
    """Which tokens are trained when the mask is applied to the shifted labels (right: the target token's own
    mask) or to the inputs (off by one: the mask of the token *before* the target), counted by kind."""
    targets, mask = batch.tokens[:, 1:], batch.loss_mask
    trained = {"labels (right)": mask[:, 1:], "inputs (off by one)": mask[:, :-1]}
    first_reply = mask[:, 1:] & ~mask[:, :-1]  # a target whose predecessor is not trained: a reply's first token
    eot = targets == eot_token
    rows = []
    for name, on in trained.items():
        rows.append({"mask read on": name, "trained tokens": int(on.sum()),
                     "of them in a reply": int((on & mask[:, 1:]).sum()),
                     "first reply tokens": int((on & first_reply).sum()),
                     "end-of-turn tokens": int((on & eot & mask[:, 1:]).sum()),
                     "outside the replies": int((on & ~mask[:, 1:]).sum())})
    return pd.DataFrame(rows).set_index("mask read on")


def with_reasoning(conv: Conversation) -> Conversation:
    """The conversation with every reply preceded by a short <think>…</think> (the user's request restated)."""
    messages, last_user = [], ""
    for m in conv.messages:
        if m.role == "user":
            last_user = m.content
        content = f"<think>{last_user}</think>{m.content}" if m.role == "assistant" else m.content
        messages.append(Message(m.role, content))
    return Conversation(tuple(messages), origin=conv.origin)


def turn_contexts(tokenizer: ChatTokenizer, conv: Conversation) -> pd.DataFrame:
    """Per assistant turn: the tokens format A trains (the turn rendered as its own prompt + reply, as inference
    sees it) next to those format B trains (one rendering of the whole conversation)."""
    whole = tokenizer.render(conv)
    rows = []
    for j in range(whole.n_turns):
        trained = {name: [t for t, tj, m in zip(chat.tokens, chat.turn, chat.loss_mask) if tj == j and m]
                   for name, chat in (("A", tokenizer.render_turn(conv, j)), ("B", whole))}
        rows.append({"turn": j, "A loss tokens": len(trained["A"]), "B loss tokens": len(trained["B"]),
                     "A trains": tokenizer.decode(trained["A"]), "B trains": tokenizer.decode(trained["B"])})
    return pd.DataFrame(rows).set_index("turn")
