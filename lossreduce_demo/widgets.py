"""Every interactive app of the suite (ipywidgets 8): the analytic explorers, the dashboard, the training buttons.

Every app is a class with
    .widget    the container to display,
    named controls (app.scheme, app.long_fraction, ...), each an ipywidgets control,
    .update()  recompute and redraw (called by every control change, or by the Train button of the training
               apps, which train nothing before the click; returns .state),
    .state     the numbers of the last update (dicts / DataFrames), with "message" ("" when all is well),
    .figures   the matplotlib Figures of the last update (made with plots.new_figure, never pyplot), each shown
               as soon as it is made; app.draw_figures = False skips them (state only, e.g. for tests and
               benchmarks).
Updates are analytic and cheap: conversations and layouts are cached per setting, weights are recomputed.
Invalid settings (e.g. uniform lengths with low > high, packed rows shorter than a conversation) show a message
in the app and leave no figure, never a traceback or NaN. `app.set(a=1, b=2)` changes several controls with one
update.
"""

from __future__ import annotations

import abc
import contextlib
import gc
import math
from functools import lru_cache

import ipywidgets as W
import numpy as np
import pandas as pd

from . import plots
from .config import pick
from .layouts import LAYOUTS, Batch, layout_waste, make_layout
from .reductions import SCHEMES, Plan, Scheme, effective_weights, token_weights
from .report import bucket_shares, length_profile
from .synth import FAMILIES, LengthSpec, make_chats
from .tokenizer import render

MAX_TOKENS = 192  # conversations are cut to this many tokens (the explorers are analytic: no model context)
_STYLE = {"description_width": "initial"}


# ---------------------------------------------------------------- cached data


def length_spec(family: str, short_mean: float, long_mean: float, long_fraction: float) -> LengthSpec:
    """How the explorers read their length controls: fixed = `short_mean` always; uniform = short..long;
    lognormal = median `short_mean`, sigma 0.8; bimodal = short or (with `long_fraction`) long, each ±25%."""
    if family == "uniform":
        return LengthSpec("uniform", low=int(short_mean), high=int(long_mean), max_len=60)
    return LengthSpec(family, mean=short_mean, sigma=0.8, short_mean=short_mean, long_mean=long_mean,
                      long_fraction=long_fraction, max_len=60)


@lru_cache(maxsize=64)
def conversations(spec: LengthSpec, turns: int, n: int, seed: int = 0, sort_by_length: bool = False) -> tuple:
    """n synthetic chats of exactly `turns` assistant turns (fewer only when cut at MAX_TOKENS), cached."""
    convs = make_chats(n, lengths=spec, turns=(turns, turns), max_tokens=MAX_TOKENS, seed=seed)
    if sort_by_length:
        convs = sorted(convs, key=lambda c: sum(render(c).loss_mask))
    return tuple(convs)


@lru_cache(maxsize=128)
def cached_layout(convs: tuple, layout: str, row_len: int | None = None) -> Batch:
    return make_layout(list(convs), layout, row_len=row_len)


def max_relative_error(effective, ideal, mask) -> float:
    """max |effective − ideal| / ideal over loss tokens (0 when there are none)."""
    eff, ref = effective[mask].double(), ideal[mask].double()
    keep = ref > 0
    return float(((eff[keep] - ref[keep]).abs() / ref[keep]).max()) if keep.any() else 0.0


# ---------------------------------------------------------------- shared plumbing


def _slider(kind, value, lo, hi, step, description, **kw):
    return kind(value=value, min=lo, max=hi, step=step, description=description, continuous_update=False,
                style=_STYLE, **kw)


def _length_controls(app, *, family="bimodal", short_mean=4, long_mean=30, long_fraction=0.25, turns=1):
    app.family = W.Dropdown(options=FAMILIES, value=family, description="lengths", style=_STYLE,
                            layout=W.Layout(width="180px"))
    app.short_mean = _slider(W.IntSlider, short_mean, 1, 60, 1, "short mean (chars)")
    app.long_mean = _slider(W.IntSlider, long_mean, 1, 60, 1, "long mean (chars)")
    app.long_fraction = _slider(W.FloatSlider, long_fraction, 0.0, 1.0, 0.05, "long fraction")
    app.turns = _slider(W.IntSlider, turns, 1, 5, 1, "turns")

    def grey_out_unused(_change=None):  # what length_spec reads for each family; the rest would move nothing
        app.long_mean.disabled = app.family.value in ("fixed", "lognormal")
        app.long_fraction.disabled = app.family.value != "bimodal"

    app.family.observe(grey_out_unused, names="value")
    grey_out_unused()
    return [app.family, app.short_mean, app.long_mean, app.long_fraction, app.turns]


class _App(abc.ABC):
    """Controls → update() → state, message and figures, each shown as PNG in an Image widget of its own that a
    redraw updates in place."""

    controls: list

    def __init__(self, rows: list[list], button: W.Button | None = None, controls: list | None = None):
        self.headline = W.HTML()  # the number to read off, as text beside the plots
        self.message = W.HTML()
        self.figure_area = W.VBox().add_class("app-figures")  # one Image per figure name, redrawn in place
        self.images: dict[str, W.Image] = {}
        self.layouts = plots.LayoutCache()  # constrained layout on the first draw, fixed after (redraw speed)
        self.state: dict = {}
        self.figures: dict = {}
        self._paused = False
        self.draw_figures = True
        if _frontend():
            _freeze_live_objects()
        self.controls = [c for row in rows for c in row] if controls is None else controls
        self.button = button
        for control in self.controls:  # every change refreshes (cheap): see _refresh
            control.observe(self._changed, names="value")
        if button is not None:  # a training app: only the button trains
            button.on_click(lambda _: self.update())
            rows = rows + [[button]]
        self.widget = W.VBox([W.HBox(row, layout=W.Layout(flex_flow="row wrap")) for row in rows]
                             + [self.headline, self.message, self.figure_area])

    def _refresh(self) -> None:
        """What a control change recomputes: everything (`update`) for an explorer; a training app overrides it
        with its cheap part, never training."""
        self.update()

    def _changed(self, _change) -> None:
        if not self._paused:
            self._refresh()

    @contextlib.contextmanager
    def hold(self):
        """Change several controls, then refresh once."""
        self._paused = True
        try:
            yield self
        finally:
            self._paused = False
        self._refresh()

    def set(self, **values) -> dict:
        with self.hold():
            for name, value in values.items():
                getattr(self, name).value = value
        return self.state

    @abc.abstractmethod
    def _compute(self, notes: list[str]) -> tuple[dict, dict]:
        """(state, figures): the numbers, and {name: a function of the figure it replaces (None if none, see
        _draw) making that Figure}."""

    def update(self) -> dict:
        notes: list[str] = []
        if self.button is not None:
            self.button.disabled = True
        try:
            state, figures = self._compute(notes)
        except ValueError as error:  # ChatFormatError is a ValueError: bad settings, reported in the app
            self.state = {"message": f"Invalid setting: {error}"}
            self.message.value = f"<b style='color:#D55E00'>⚠ Invalid setting:</b> {_escape(error)}"
            self.headline.value = ""
            self._draw({})
            return self.state
        except Exception as error:  # a click that failed: shown in the app, never reported as done
            if self.button is None:
                raise
            self.state = {"message": f"Failed: {type(error).__name__}: {error}"}
            self.headline.value = ""
            self.message.value = (f"<b style='color:#D55E00'>⚠ Failed:</b> {_escape(type(error).__name__)}: "
                                  f"{_escape(error)}")
            self._draw({})
            return self.state
        finally:
            if self.button is not None:
                self.button.disabled = False
        state["message"] = " ".join(notes)
        if "headline" in state:  # an app may instead write richer HTML into self.headline itself
            self.headline.value = f"<b>{_escape(state['headline'])}</b>"
        self.state = state
        self.message.value = "".join(f"<div style='color:#555'>ℹ {_escape(n)}</div>" for n in notes)
        self._draw(figures if self.draw_figures else {})
        return self.state

    def _draw(self, figures: dict) -> None:
        """Make each figure of {name: function making it} and show it at once as PNG in the app's Image widget of
        that name (its new bytes sent in place, binary): the browser shows the first while the next is drawn.
        In a kernel the function gets the figure of that name shown before, to redraw in place if it can (see
        plots.made_by); else (and outside a kernel: tests keep every figure) None."""
        frontend = _frontend()  # none in plain Python and tests: the figures are only kept
        before, self.figures, shown = self.figures, {}, []
        for name, make_figure in figures.items():
            fig = self.figures[name] = make_figure(before.get(name) if frontend else None)
            if not frontend:
                continue
            self.layouts.reuse(name, fig)
            png = plots.png_bytes(fig)
            self.layouts.remember(name, fig)
            if name not in self.images:
                self.images[name] = W.Image(format="png", layout=W.Layout(  # its own size, narrower if need be
                    max_width="100%", height="auto", align_self="flex-start"))
            self.images[name].value = png
            shown.append(self.images[name])
        if frontend:
            if tuple(shown) != self.figure_area.children:
                self.figure_area.children = tuple(shown)
            del before  # the figures replaced (those not redrawn in place) are reference cycles: freed now,
            gc.collect()  # with the new images on their way

    def _progress(self, text: str) -> None:
        """A status line while a training app works."""
        self.message.value = f"<div style='color:#555'>⏳ {_escape(text)}</div>"

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)


def _frontend() -> bool:
    """Whether a kernel with a frontend runs us (IPython): else (plain Python, tests) no figure is rendered."""
    from IPython import get_ipython

    return get_ipython() is not None


def _freeze_live_objects() -> None:
    """Take every object alive now (the libraries, the notebook's data) out of the reach of Python's cyclic
    garbage collector (gc.freeze), after collecting what is garbage (gc.unfreeze first: an app made before and
    dropped since is freed now). Each redraw leaves the figures it replaced as reference cycles. Only a full
    collection frees them; over a whole kernel heap one takes 0.1–0.3 s and came in the middle of one redraw
    in six. Collected after each redraw, with the live objects frozen, they take ~15 ms (bench/widget_latency.py)."""
    if _freeze_shared:  # apps made together (a Dashboard's): frozen once, before the first
        return
    gc.unfreeze()
    gc.collect()
    gc.freeze()


_freeze_shared = False  # True inside _one_freeze_for_all


@contextlib.contextmanager
def _one_freeze_for_all():
    """Apps made inside (a Dashboard's) share one collection and freeze, made here: 0.24 s each, measured."""
    global _freeze_shared
    if _frontend():
        _freeze_live_objects()
    outer, _freeze_shared = _freeze_shared, True
    try:
        yield
    finally:
        _freeze_shared = outer


def _escape(text) -> str:
    import html

    return html.escape(str(text))


# ---------------------------------------------------------------- 01: formats


class FormatsExplorer(_App):
    """Format A (split) vs B (multiturn) vs packed on the same few chats: layout diagrams and compute waste."""

    def __init__(self, n_conversations: int = 4, seed: int = 0, **lengths):
        self.seed = seed
        lengths = {"turns": 3, "long_mean": 24, **lengths}
        rows = [_length_controls(self, **lengths)]
        self.n_conversations = _slider(W.IntSlider, n_conversations, 1, 12, 1, "conversations")
        self.row_len = _slider(W.IntSlider, MAX_TOKENS, 32, 256, 16, "packed row length")
        super().__init__(rows + [[self.n_conversations, self.row_len]])
        self.update()

    def _compute(self, notes):
        spec = length_spec(self.family.value, self.short_mean.value, self.long_mean.value, self.long_fraction.value)
        convs = conversations(spec, self.turns.value, self.n_conversations.value, self.seed)
        batches = {name: cached_layout(convs, name, self.row_len.value if name == "packed" else None)
                   for name in LAYOUTS}
        waste = pd.DataFrame([layout_waste(b) for b in batches.values()])
        ratio = waste.tokens[0] / waste.tokens[1]
        turns = np.mean([c.n_assistant_turns for c in convs])
        if turns < self.turns.value:
            notes.append(f"Some conversations have fewer than {self.turns.value} turns: cut at {MAX_TOKENS} tokens.")
        if self.turns.value == 1:
            notes.append("With one turn per conversation, split and multiturn are the same rows.")
        padding = ", ".join(f"{row.layout} {row.padding_fraction:.0%}" for row in waste.itertuples())
        state = {"waste": waste, "split_over_multiturn_tokens": float(ratio), "mean_turns": float(turns),
                 "headline": f"format A computes {ratio:.2f}× the tokens of format B · padding: {padding}"}
        return state, {"layouts": lambda fig: plots.layout_diagrams(batches, fig=fig),
                       "waste": lambda fig: plots.waste_bars(batches, fig=fig)}


# ---------------------------------------------------------------- 02: weights


def _scheme_controls(app, scheme="seq-mean-token-mean", layout="multiturn", alpha=0.5, l_max=0):
    app.layout = W.Dropdown(options=LAYOUTS, value=layout, description="format", style=_STYLE,
                            layout=W.Layout(width="200px"))
    app.scheme = W.Dropdown(options=SCHEMES, value=scheme, description="scheme", style=_STYLE,
                            layout=W.Layout(width="300px"))
    app.alpha = _slider(W.FloatSlider, alpha, -1.0, 2.0, 0.1, "α (length-power)")
    app.l_max = _slider(W.IntSlider, l_max, 0, 128, 1, "L_max (0 = longest)")
    return [app.layout, app.scheme, app.alpha, app.l_max]


def _scheme(app, batch: Batch, notes: list[str]) -> Scheme:
    name, alpha, l_max = app.scheme.value, float(app.alpha.value), int(app.l_max.value)
    app.alpha.disabled, app.l_max.disabled = name != "length-power", name != "seq-mean-token-sum-norm"
    if name == "length-power" and alpha < 0:
        notes.append(f"α={alpha:g} < 0 favours short responses even more than seq-mean-token-mean (α=0).")
    if name == "length-power" and alpha > 1:
        notes.append(f"α={alpha:g} > 1 favours long responses more than token-mean (α=1).")
    if name == "seq-mean-token-sum-norm" and l_max:
        longest = int(batch.loss_mask.sum(1).max())
        if l_max < longest:
            notes.append(f"L_max={l_max} is shorter than the longest response here (≈{longest} loss tokens); "
                         "Dr. GRPO's constant is the generation budget. It only rescales the weights.")
    if name == "turn-mean" and app.turns.value == 1 and batch.layout != "split":
        notes.append("With one turn per conversation, turn-mean = seq-mean-token-mean.")
    return Scheme(name, alpha=alpha, l_max=l_max or None)


def _extremes(profile: pd.DataFrame) -> dict:
    """Relative weight per token of the shortest and the longest samples, and the step share of the longer half:
    the len // 2 longest samples by rank (ties in batch order), so it is half the samples even when many share the
    longest length."""
    short = profile[profile.length == profile.length.min()]
    long = profile[profile.length == profile.length.max()]
    longer_half = (profile.length.rank(method="first", ascending=False) <= len(profile) // 2).to_numpy()
    return {"relative_shortest": float(short.relative.mean()), "relative_longest": float(long.relative.mean()),
            "shortest_over_longest": float(short.relative.mean() / long.relative.mean()),
            "share_longer_half": float(profile.share[longer_half].sum()),
            "tokens_longer_half": float(profile.length[longer_half].sum() / profile.length.sum())}


class WeightExplorer(_App):
    """The response-length distribution and the scheme → per-token weight heatmap, weight per token vs length,
    share of the step by length bucket (the scheme vs token-mean)."""

    def __init__(self, n_conversations: int = 16, seed: int = 0, **settings):
        self.seed, self.n_conversations = seed, n_conversations
        scheme_kw = {k: settings.pop(k) for k in ("scheme", "layout", "alpha", "l_max") if k in settings}
        rows = [_length_controls(self, **settings), _scheme_controls(self, **scheme_kw)]
        super().__init__(rows)
        self.update()

    def batch(self) -> Batch:
        spec = length_spec(self.family.value, self.short_mean.value, self.long_mean.value, self.long_fraction.value)
        return cached_layout(conversations(spec, self.turns.value, self.n_conversations, self.seed),
                             self.layout.value, MAX_TOKENS if self.layout.value == "packed" else None)

    def _compute(self, notes):
        batch = self.batch()
        scheme = _scheme(self, batch, notes)
        weights, reference = token_weights(batch, scheme), token_weights(batch, "token-mean")
        profile, ref_profile = length_profile(batch, weights), length_profile(batch, reference)
        buckets = {scheme.label: bucket_shares(profile), "token-mean": bucket_shares(ref_profile)}
        if profile.length.nunique() == 1:
            notes.append("Every sample has the same number of loss tokens: all schemes weight tokens equally.")
        state = {"scheme": scheme.label, "profile": profile, "buckets": buckets[scheme.label],
                 "total_weight": float(weights.sum()), **_extremes(profile)}
        if profile.length.nunique() == 1:  # no longer half to speak of
            state["headline"] = (f"{scheme.label}: every sample has {int(profile.length.iloc[0])} loss tokens, so "
                                 "every scheme gives every token the same weight · shortest ÷ longest "
                                 f"{state['shortest_over_longest']:.3g}×")
        else:
            state["headline"] = (f"{scheme.label}: a token of the shortest reply weighs "
                                 f"{state['shortest_over_longest']:.3g}× one of the longest · the longer half of the "
                                 f"samples gets {state['share_longer_half']:.0%} of the step "
                                 f"({state['tokens_longer_half']:.0%} of the loss tokens)")
        return state, {
            "heatmap": lambda fig: plots.weight_heatmap(
                batch, weights, title=f"{scheme.label}: weight per token vs token-mean", fig=fig),
            "length": lambda fig: plots.weight_vs_length({scheme.label: profile, "token-mean": ref_profile}, fig=fig),
            "buckets": lambda fig: plots.share_by_bucket(buckets, fig=fig),
        }


# ---------------------------------------------------------------- 03: gradient accumulation × data parallel


class AccumulationExplorer(_App):
    """Gradient-accumulation steps K, ranks R, normalisation and scheme → the weights the optimiser really
    applies vs the full-batch ones, and their max relative error (0 for global normalisation)."""

    def __init__(self, n_conversations: int = 16, seed: int = 0, **settings):
        self.seed, self.n_conversations = seed, n_conversations
        scheme_kw = {k: settings.pop(k) for k in ("scheme", "layout", "alpha", "l_max") if k in settings}
        scheme_kw.setdefault("scheme", "token-mean")
        self.micro_batches = _slider(W.IntSlider, settings.pop("micro_batches", 4), 1, 16, 1, "GA steps K")
        self.ranks = _slider(W.IntSlider, settings.pop("ranks", 1), 1, 4, 1, "ranks R")
        self.normalization = W.ToggleButtons(options=("local", "global"), value=settings.pop("normalization", "local"),
                                             description="normalisation", style=_STYLE)
        self.sort_by_length = W.Checkbox(value=settings.pop("sort_by_length", False),
                                         description="sort by length (first micro-batches short)", style=_STYLE)
        self.sizes = W.HTML()
        rows = [_length_controls(self, **{"turns": 1, **settings}), _scheme_controls(self, **scheme_kw),
                [self.micro_batches, self.ranks, self.normalization, self.sort_by_length]]
        super().__init__(rows)
        self.widget.children = self.widget.children[:-2] + (self.sizes,) + self.widget.children[-2:]
        self.update()

    def batch(self) -> Batch:
        spec = length_spec(self.family.value, self.short_mean.value, self.long_mean.value, self.long_fraction.value)
        convs = conversations(spec, self.turns.value, self.n_conversations, self.seed, self.sort_by_length.value)
        return cached_layout(convs, self.layout.value, MAX_TOKENS if self.layout.value == "packed" else None)

    def _compute(self, notes):
        batch = self.batch()
        scheme = _scheme(self, batch, notes)
        R, K, norm = self.ranks.value, self.micro_batches.value, self.normalization.value
        rows = batch.shape[0]
        per_micro = rows / (R * K)
        self.sizes.value = (f"{rows} rows = {R} rank(s) × {K} micro-batch(es) × ≈{per_micro:.2g} rows "
                            f"(global batch {rows} rows, {int(batch.loss_mask.sum())} loss tokens; rows "
                            f"{'sorted by length, shortest first' if self.sort_by_length.value else 'in data order'})")
        if R * K > rows:
            notes.append(f"R·K = {R * K} > {rows} rows: some micro-batches are empty (they add nothing).")
        if self.sort_by_length.value and self.family.value == "fixed":
            notes.append("fixed lengths: every conversation is as long as the next, so sorting changes no weight.")
        elif self.sort_by_length.value and norm == "global":
            notes.append("global normalisation: every micro-batch divides by the whole batch's count, so the order "
                         "of the rows changes no weight.")
        ideal = token_weights(batch, scheme)
        effective, rank, step = effective_weights(batch, scheme, Plan(R, K, norm))
        error = max_relative_error(effective, ideal, batch.loss_mask)
        eff, ref = length_profile(batch, effective), length_profile(batch, ideal)
        per_sample = pd.DataFrame({"sample": ref["sample"], "length": ref.length, "ideal": ref.weight_per_token,
                                   "effective": eff.weight_per_token})
        per_sample["error"] = (per_sample.effective - per_sample.ideal) / per_sample.ideal
        state = {"scheme": scheme.label, "ranks": R, "micro_batches": K, "normalization": norm,
                 "micro_batch_rows": per_micro, "max_rel_error": error, "per_sample": per_sample,
                 "total_weight": float(effective.sum()), "ideal_total_weight": float(ideal.sum()),
                 "headline": f"largest relative error of the applied weights: {error:.1%}"
                             + (" (exact: the full-batch weights)" if error < 1e-9 else "")}
        title = (f"{scheme.label}, {norm} normalisation, R={R}, K={K}: max relative error "
                 f"{error:.1%}" + (" (exact)" if error < 1e-9 else ""))
        order = "rows sorted by length, shortest first" if self.sort_by_length.value else "rows in data order"
        return state, {"weights": lambda fig: plots.effective_vs_ideal(
            batch, effective, ideal, rank=rank, step=step, title=title, row_order=order, fig=fig)}


# ---------------------------------------------------------------- Voilà dashboard


# ---------------------------------------------------------------- 08: ΔL Normalization


DELTA_L_GRID = tuple(np.round(np.arange(0.0, 1.51, 0.25), 2))  # the a values the explorer's curves are drawn at


@lru_cache(maxsize=16)
def noisy_tail_pool(spread: float, n: int = 128, seed: int = 0) -> Batch:
    """A pool of noisy-tail chats (E8) with log-normal reply lengths of median 10 and spread σ = `spread`."""
    from .synth import make_noisy_tail_chats

    spec = LengthSpec("lognormal", mean=10, sigma=spread, max_len=56)
    return make_layout(make_noisy_tail_chats(n, lengths=spec, seed=seed), "multiturn")


@lru_cache(maxsize=16)
def delta_l_curves(spread: float, n_batches: int = 100, seed: int = 0) -> pd.DataFrame:
    """What the noise model predicts for ΔL a over DELTA_L_GRID, relative to a = 0 (step variance) and to
    token-mean (noise-to-signal, for a signal per sequence and per token). Lengths only: no gradients."""
    from .variance import draw_minibatches, predicted_relative_variance

    pool = noisy_tail_pool(spread)
    schemes = [Scheme("token-mean")] + [Scheme("delta-l", delta_l_alpha=float(a)) for a in DELTA_L_GRID]
    batches = draw_minibatches(pool, schemes, n_batches=n_batches, seed=seed)
    frames = {signal: predicted_relative_variance(batches, signal).set_index("scheme")
              for signal in ("per-sequence", "per-token")}
    labels = [s.label for s in schemes[1:]]
    noise = frames["per-sequence"].noise
    out = pd.DataFrame({"a": DELTA_L_GRID, "variance_vs_a0": (noise[labels] / noise[labels[0]]).to_numpy()})
    for signal, frame in frames.items():
        out[f"noise_to_signal_{signal}"] = (frame.token_noise[labels] / frame.token_noise["token-mean"]).to_numpy()
    return out


class DeltaLExplorer(_App):
    """ΔL Normalization's α (`a`): its weight per token against response length, and what the noise model
    predicts for its step (variance relative to a = 0; noise-to-signal relative to token-mean, per-sequence
    or per-token signal). Analytic: only the pool's lengths are used; curves are cached per length spread."""

    def __init__(self, a: float = 1.0, spread: float = 0.8):
        self.a = _slider(W.FloatSlider, a, 0.0, 1.5, 0.25, "ΔL a")
        self.spread = _slider(W.FloatSlider, spread, 0.2, 1.2, 0.1, "length spread σ")
        super().__init__([[self.a, self.spread]])
        self.update()

    def _compute(self, notes):
        from .variance import weights_by_length

        a, spread = round(float(self.a.value), 2), round(float(self.spread.value), 2)
        curves = delta_l_curves(spread)
        here = curves.iloc[int(np.argmin(np.abs(curves.a - a)))]
        pool = noisy_tail_pool(spread)
        schemes = [Scheme("token-mean"), Scheme("seq-mean-token-mean"), Scheme("delta-l", delta_l_alpha=a)]
        profile = weights_by_length(pool, schemes)
        state = dict(a=a, spread=spread, variance_vs_a0=float(here.variance_vs_a0),
                     noise_to_signal_per_sequence=float(here["noise_to_signal_per-sequence"]),
                     noise_to_signal_per_token=float(here["noise_to_signal_per-token"]), curves=curves,
                     profile=profile)
        notes.append(f"ΔL a={a:g}: step variance {state['variance_vs_a0']:.2f}× that of a=0; noise-to-signal "
                     f"{state['noise_to_signal_per_sequence']:.2f}× token-mean's for one signal per sequence, "
                     f"{state['noise_to_signal_per_token']:.2f}× for a signal per token.")
        return state, {"delta_l": lambda _: plots.beyond.delta_l_figure(profile, curves, a)}


class RatioTrainingApp(_App):
    """E10 behind a "Train" button: warm-start the toy policy (once), train token-level PPO, GSPO and CISPO from it
    with 4 updates per batch, then draw the importance ratios' variance against response length and the
    zero-gradient fractions (`plots.beyond.e10_figure`). Nothing trains until the click; `.train()` does the same
    without one. `.state`: the by-length table and each rule's zero-gradient fraction."""

    def __init__(self, seed: int = 0, steps: int | None = None):
        self.seed, self.steps = seed, steps
        super().__init__([], _train_button("warm start, then 3 rules × 4 updates per batch"))
        self.message.value = "Click Train: warm start, then 3 rules × 4 updates per batch."

    def train(self) -> dict:
        return self.update()

    def _compute(self, notes):
        from dataclasses import replace

        from .experiments import importance_ratios as e10

        self._progress("warm start…")
        start = e10.warm_start(self.seed)
        frames = []
        for rule in e10.RULE_CONFIGS:
            self._progress(f"training {rule}…")
            cfg = replace(e10.rule_config(rule), steps=self.steps or pick(15, 3))
            frames.append(e10.collect(rule, self.seed, start, config=cfg))
        by_length = e10.by_length_table(pd.concat(frames, ignore_index=True))
        zero = {rule: e10.zero_gradient_fraction(by_length, rule) for rule in e10.RULE_CONFIGS}
        notes.append("done: zero-gradient tokens " + ", ".join(f"{r} {v:.1%}" for r, v in zero.items())
                     + " — click again to re-run")
        return dict(by_length=by_length, zero_gradient_fraction=zero), {
            "e10": lambda _: plots.beyond.e10_figure(by_length)}


class Dashboard:
    """WeightExplorer and AccumulationExplorer in two tabs (the Voilà app)."""

    def __init__(self, n_conversations: int = 16, seed: int = 0):
        with _one_freeze_for_all():
            self.weights = WeightExplorer(n_conversations, seed)
            self.accumulation = AccumulationExplorer(n_conversations, seed)
        self.widget = W.Tab(children=[self.weights.widget, self.accumulation.widget],
                            titles=("Weights per token", "Accumulation × DP"))  # whole labels: a tab is ~144 px wide

    @property
    def state(self) -> dict:
        return {"weights": self.weights.state, "accumulation": self.accumulation.state}

    def update(self) -> dict:
        self.weights.update()
        self.accumulation.update()
        return self.state

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)


def state_is_finite(state) -> bool:
    """True when no number in a state (nested dicts, DataFrames, floats) is NaN or infinite."""
    if isinstance(state, dict):
        return all(state_is_finite(v) for v in state.values())
    if isinstance(state, pd.DataFrame):
        numbers = state.select_dtypes("number")
        return bool(np.isfinite(numbers.to_numpy(dtype=float)).all())
    if isinstance(state, (float, int, np.floating)):
        return math.isfinite(float(state))
    return True


# ---------------------------------------------------------------- your framework (notebook 07)

COMPLETION_LENGTHS = (2, 3, 3, 4, 4, 5, 6, 6, 8, 10, 12, 14, 18, 22, 26, 30)  # short first: micro-batches differ
TRUNCATED_ROW = 6  # the completion masked by "mask_truncated_completions"


class FrameworkExplorer(_App):
    """A real library's option (`frameworks`), GA steps K and ranks R → the weight of every token on a batch of
    16 completions, and each sample's error against the same option on the full batch (R = K = 1)."""

    def __init__(self, framework: str = "trl-grpo", option: dict | None = None, micro_batches: int = 4,
                 ranks: int = 2, mask_truncated: bool = True):
        from .frameworks import FRAMEWORKS

        self.framework = W.Dropdown(options=list(FRAMEWORKS), value=framework, description="framework",
                                    style=_STYLE)
        self.option = W.Dropdown(description="option", style=_STYLE, layout=W.Layout(width="520px"))
        self._fill_options(option)
        self.micro_batches = _slider(W.IntSlider, micro_batches, 1, 8, 1, "GA steps K")
        self.ranks = _slider(W.IntSlider, ranks, 1, 4, 1, "ranks R")
        self.mask_truncated = W.Checkbox(value=mask_truncated, style=_STYLE,
                                         description="one truncated completion fully masked")
        super().__init__([[self.framework, self.option], [self.micro_batches, self.ranks, self.mask_truncated]])
        self.framework.unobserve(self._changed, names="value")
        self.framework.observe(self._framework_changed, names="value")
        self.update()

    def _fill_options(self, option: dict | None = None) -> None:
        from .frameworks import option_settings, spell

        settings = option_settings(self.framework.value)
        self.option.options = [(spell(s), i) for i, s in enumerate(settings)]
        self._settings = settings
        self.option.value = settings.index(option) if option in settings else 0

    def _framework_changed(self, _change) -> None:
        with self.hold():  # repopulating the option list must not update with a stale option
            self._fill_options()

    def batch(self) -> Batch:
        masked = (TRUNCATED_ROW,) if self.mask_truncated.value else ()
        return _completions(masked)

    def _compute(self, notes):
        from .frameworks import framework, placed_weights, spell, weight_formula

        name, options = self.framework.value, self._settings[self.option.value]
        R, K, batch = self.ranks.value, self.micro_batches.value, self.batch()
        fw = framework(name)
        rec = fw.recipe(micro_batches=K, **options)
        effective, rank, step = placed_weights(batch, name, ranks=R, micro_batches=K, **options)
        ideal = placed_weights(batch, name, **options)[0]
        if R * K > batch.shape[0]:
            notes.append(f"R·K = {R * K} > {batch.shape[0]} rows: some micro-batches are empty (they add nothing).")
        error = max_relative_error(effective, ideal, batch.loss_mask)
        eff, ref = length_profile(batch, effective), length_profile(batch, ideal)
        per_sample = pd.DataFrame({"sample": ref["sample"], "length": ref.length, "ideal": ref.weight_per_token,
                                   "effective": eff.weight_per_token})
        per_sample["error"] = (per_sample.effective - per_sample.ideal) / per_sample.ideal
        formula = weight_formula(rec, K)
        state = {"framework": name, "version": fw.version, "option": options, "spelled": rec.spelled,
                 "scheme": rec.scheme.label, "normalization": rec.normalization, "formula": formula,
                 "ranks": R, "micro_batches": K, "max_rel_error": error, "per_sample": per_sample,
                 "total_weight": float(effective.sum()), "ideal_total_weight": float(ideal.sum())}
        verdict = "exact" if error < 1e-9 else f"{error:.1%}"
        self.headline.value = (f"<b>{_escape(fw.version)}</b>: <code>{_escape(rec.spelled)}</code> → "
                               f"{_escape(rec.scheme.label)} × {rec.normalization}, weight of a token "
                               f"<b>{_escape(formula)}</b>; max error vs the full batch: <b>{verdict}</b>")
        title = f"{name}: {spell(options)}\nR={R}, K={K}: max relative error vs the full batch {verdict}"
        return state, {"weights": lambda fig: plots.effective_vs_ideal(
            batch, effective, ideal, rank=rank, step=step, title=title, fig=fig)}


@lru_cache(maxsize=4)
def _completions(masked: tuple) -> Batch:
    from .layouts import completion_batch

    return completion_batch(COMPLETION_LENGTHS, masked=masked)


# ---------------------------------------------------------------- training behind a button (04, 05)


def _train_button(tooltip: str) -> W.Button:
    return W.Button(description="Train", icon="play", button_style="primary", tooltip=tooltip)


class TrainingApp(_App):
    """Notebook 04: the branch task's whole length distribution (short and long reply lengths, long fraction, turns
    before the branch), the format, GA steps K and normalisation, and the schemes. Every change recomputes the
    closed-form P("L") of each chosen scheme (`training_app.predictions`, no training: `.predicted`); Train trains
    one tiny GPT per scheme (`training_app.train_branch`, a progress bar per step) and shows the measured P("L")
    beside the prediction, and the held-out loss by reply length."""

    def __init__(self, schemes=None, seed: int = 0, **setting):
        from . import training_app as ta

        self.seed = seed
        default = ta.BranchSetting(**setting)
        self.schemes = W.SelectMultiple(options=list(ta.SCHEMES), value=tuple(schemes or ta.DEFAULT_SCHEMES),
                                        rows=len(ta.SCHEMES), description="schemes", style=_STYLE,
                                        layout=W.Layout(width="330px"))
        self.short_len = _slider(W.IntSlider, default.short_len, 2, 40, 1, "short reply (tokens)")
        self.long_len = _slider(W.IntSlider, default.long_len, 2, 100, 1, "long reply (tokens)")
        self.long_fraction = _slider(W.FloatSlider, default.long_fraction, 0.0, 1.0, 0.05, "long fraction")
        self.context_turns = _slider(W.IntSlider, default.context_turns, 0, 4, 1, "turns before the branch")
        self.layout = W.Dropdown(options=LAYOUTS, value=default.layout, description="format", style=_STYLE,
                                 layout=W.Layout(width="200px"))
        self.grad_accum = W.Dropdown(options=ta.GA_STEPS, value=default.grad_accum, description="GA steps K",
                                     style=_STYLE, layout=W.Layout(width="160px"))
        self.normalization = W.ToggleButtons(options=ta.NORMALIZATIONS, value=default.normalization,
                                             description="normalisation", style=_STYLE)
        self.steps = _slider(W.IntSlider, default.steps or pick(100, 24), 4, 400, 4, "optimizer steps")
        self.progress = W.IntProgress(value=0, min=0, max=1, description="training", style=_STYLE,
                                      layout=W.Layout(visibility="hidden"))
        self.prediction = W.HTML()
        self.result = W.HTML()
        lengths = W.VBox([self.short_len, self.long_len, self.long_fraction, self.context_turns])
        plan = W.VBox([self.layout, self.grad_accum, self.normalization, self.steps])
        self.predicted = pd.DataFrame()
        super().__init__([[self.schemes, lengths, plan]], _train_button("train one tiny GPT per chosen scheme"),
                         controls=[self.schemes, *lengths.children, *plan.children])
        self.widget.children = (self.widget.children[:-2] + (self.progress, W.HBox([self.prediction, self.result]))
                                + self.widget.children[-2:])
        self.predict()
        self.message.value = "Nothing trains until you click Train."

    def setting(self):
        """The controls as a `training_app.BranchSetting` (ValueError with the reason when they do not fit)."""
        from . import training_app as ta

        return ta.BranchSetting(short_len=self.short_len.value, long_len=self.long_len.value,
                                long_fraction=float(self.long_fraction.value), context_turns=self.context_turns.value,
                                layout=self.layout.value, grad_accum=self.grad_accum.value,
                                normalization=self.normalization.value, steps=self.steps.value)

    def predict(self) -> pd.DataFrame:
        """Recompute the closed-form P("L") of every chosen scheme (cheap, no training) into `.predicted`."""
        from . import training_app as ta

        try:
            setting = self.setting()
            f = ta.long_fraction(ta.training_set(setting, self.seed))  # the set Train will use
            self.predicted = ta.predictions(self.schemes.value, setting, f)
        except ValueError as error:
            self.predicted = pd.DataFrame()
            self.prediction.value = f"<b style='color:#D55E00'>⚠ Invalid setting:</b> {_escape(error)}"
            self.button.disabled = True
            return self.predicted
        self.button.disabled = False
        note = " (packed × local: micro-batches hold about 16/K conversations)" if (
            setting.layout == "packed" and setting.normalization == "local" and setting.grad_accum > 1) else ""
        rows = "".join(f"<tr><td>{_escape(r.run)}</td><td><b>{r.predicted:.3f}</b></td></tr>"
                       for r in self.predicted.itertuples())
        self.prediction.value = (f"<b>Predicted P(\"L\")</b>, long fraction of the training set {f:.3f}{note}"
                                 f"<table>{rows}</table>")
        if self.state.get("table") is not None:  # the last result no longer matches the controls
            self.result.value = "<i style='color:#555'>settings changed: click Train for a new result</i>"
            self.headline.value = ""
        return self.predicted

    def _refresh(self) -> None:  # a control change recomputes the prediction only: nothing trains
        self.predict()

    def _show_progress(self, at) -> None:
        """The bar and the status line after each optimizer step (`at`: a training_app.Progress)."""
        self.progress.max, self.progress.value = at.total, at.done
        self.progress.description = f"step {at.done}/{at.total}"
        self._progress(f"training {at.run} (scheme {(at.done - 1) // at.steps + 1}/{at.total // at.steps}): "
                       f"step {at.step}/{at.steps}, {at.seconds:.1f} s")

    def _compute(self, notes):
        from . import training_app as ta

        setting = self.setting()
        self.progress.value, self.progress.layout.visibility = 0, "visible"
        self.headline.value = ""
        self._progress(f"preparing {len(self.schemes.value)} models × {setting.config().steps} steps…")
        try:
            run = ta.train_branch(self.schemes.value, setting, seed=self.seed, progress=False,
                                  on_step=self._show_progress)
        finally:
            self.progress.layout.visibility = "hidden"
        notes.append(f"trained in {run.seconds:.1f} s: change a setting and click again")
        rows = "".join(f"<tr><td>{_escape(r.run)}</td><td>{r.predicted:.3f}</td><td><b>{r.measured:.3f}</b></td></tr>"
                       for r in run.table.itertuples())
        self.result.value = (f"<b>Trained</b> ({run.seconds:.1f} s)<table><tr><th>scheme</th><th>predicted</th>"
                             f"<th>measured</th></tr>{rows}</table>")
        headline = "; ".join(f'{r.run}: P("L") {r.measured:.3f} measured vs {r.predicted:.3f} predicted'
                             for r in run.table.itertuples()) + f" (trained in {run.seconds:.1f} s)"
        state = {"table": run.table, "seconds": run.seconds, "long_fraction": run.long_fraction,
                 "setting": setting, "headline": headline}
        return state, ta.figure_makers(run)


class RLTrainingApp(_App):
    """Notebook 05: Train warm-starts the policy (once) and trains each recipe from it, redrawing the
    length-bias ratio every `redraw_every` steps."""

    def __init__(self, task=None, algorithms=("GRPO", "DAPO", "Dr. GRPO"), seed: int = 0, steps: int | None = None,
                 redraw_every: int = 5):
        from . import rl

        self.task, self.algorithms, self.seed, self.steps = task or rl.E6_TASK, tuple(algorithms), seed, steps
        self.redraw_every = redraw_every
        self._start = None  # the warm-started policy, made on the first click
        super().__init__([], _train_button("warm start, then one run per recipe"))
        self.message.value = "Click Train: warm start, then one run per recipe."

    def _compute(self, notes):
        from . import rl
        from .plots import rl as rl_plots

        if self._start is None:
            self._progress("warm start (SFT on the templates)…")
            self._start = rl.warm_start(self.task, self.seed)
        rows: list[dict] = []
        for name in self.algorithms:
            cfg = rl.algorithm_config(name, **({"steps": self.steps} if self.steps else {}))
            self._progress(f"training {name} ({cfg.scheme}, {cfg.advantage} advantage)…")

            def on_step(step, row, _policy, name=name, cfg=cfg):
                rows.append(dict(algorithm=name, scheme=cfg.scheme, seed=self.seed, **row))
                if step % self.redraw_every == 0 and self.draw_figures:
                    self._draw({"ratio": lambda _: rl_plots.ratio_curves(pd.DataFrame(rows))})

            rl.train_policy(self.task, cfg, self.seed, self._start, callback=on_step, progress=False)
        notes.append("done: click again to re-run from the same warm start")
        curves = pd.DataFrame(rows)
        headline = "π(long wrong) / π(short wrong) " + rl_plots.matched_reward_title(curves)
        return {"curves": curves, "headline": headline}, {"ratio": lambda _: rl_plots.ratio_curves(curves)}

