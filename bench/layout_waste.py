"""Compute spent per trained token by each layout (format A = split, format B = multiturn, packed rows).

    python bench/layout_waste.py

`tokens/loss` counts real tokens the model reads per loss token (what split repeats: every prefix);
`slots/loss` also counts padding (what a dense forward pass pays). Ratios are against multiturn.
The last line is a JSON dict of the key numbers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lossreduce_demo.chats import load_chats  # noqa: E402
from lossreduce_demo.layouts import layout_waste, make_layout  # noqa: E402
from lossreduce_demo.synth import make_chats  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LAYOUTS = [("split", None), ("multiturn", None), ("packed", 128), ("packed", 256)]


def waste_table(conversations, dataset: str) -> pd.DataFrame:
    rows = []
    for layout, row_len in LAYOUTS:
        w = layout_waste(make_layout(conversations, layout, row_len=row_len))
        rows.append(dict(dataset=dataset, layout=f"{layout}-{row_len}" if row_len else layout, rows=w["rows"],
                         row_len=w["row_len"], tokens=w["tokens"], loss_tokens=w["loss_tokens"],
                         tokens_per_loss=w["tokens_per_loss_token"], slots_per_loss=w["slots_per_loss_token"],
                         padding=w["padding_fraction"]))
    table = pd.DataFrame(rows)
    base = table.set_index("layout").loc["multiturn"]
    table["tokens_vs_multiturn"] = table.tokens_per_loss / base.tokens_per_loss
    table["slots_vs_multiturn"] = table.slots_per_loss / base.slots_per_loss
    return table


def main() -> dict:
    datasets = {
        "default_chats (1-3 turns)": load_chats(ROOT / "data" / "default_chats.jsonl"),
        "make_chats(256, turns=(3, 6))": make_chats(256, turns=(3, 6), seed=0),
    }
    tables = []
    for name, convs in datasets.items():
        turns = sum(c.n_assistant_turns for c in convs) / len(convs)
        print(f"{name}: {len(convs)} conversations, {turns:.2f} assistant turns each on average")
        tables.append(waste_table(convs, name))
    table = pd.concat(tables, ignore_index=True)
    print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    key = {}
    for (name, _), short in zip(datasets.items(), ("default", "turns3to6")):
        t = table[table.dataset == name].set_index("layout")
        key[short] = {
            "split_tokens_vs_multiturn": round(float(t.loc["split", "tokens_vs_multiturn"]), 3),
            "split_slots_vs_multiturn": round(float(t.loc["split", "slots_vs_multiturn"]), 3),
            "multiturn_padding": round(float(t.loc["multiturn", "padding"]), 3),
            "packed128_padding": round(float(t.loc["packed-128", "padding"]), 3),
            "packed256_padding": round(float(t.loc["packed-256", "padding"]), 3),
            "packed128_slots_vs_multiturn": round(float(t.loc["packed-128", "slots_vs_multiturn"]), 3),
            "packed256_slots_vs_multiturn": round(float(t.loc["packed-256", "slots_vs_multiturn"]), 3),
        }
    print(json.dumps(key))
    return key


if __name__ == "__main__":
    main()
