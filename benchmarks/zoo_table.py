"""Zoo cost table: for every model of ``tests/zoo/models.py`` (tiny-config transformers and timm models, random
weights), which Gram engine runs and what the Gram and the Jacobian norm cost against their limits.

    python benchmarks/zoo_table.py [--n N] [--rounds R] [--threads T] [--models NAME ...] [--quick] [--json PATH]

- Gram / limit_G: ``loss_gradient_gram`` (``method="auto"``, what a user gets) against one batched forward and
  backward pass of the mean loss. The engine column says whether the layerwise engine took the model, or the
  reason it refused it (then ``auto`` fell back); where no engine produced a value the row says why.
- Jacobian / limit_J: ``jacobian_norm`` (softmax; text models w.r.t. their token embeddings) against ``1 + C``
  batched forwards.

Times are CPU seconds of this process (``time.process_time``), medians over rounds, round-robin (``_timing.py``);
ratios are what to read, measured in one process. No timing assertion anywhere: ``--quick`` is a smoke run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _timing import parse_device, timed, timing_note  # noqa: E402

from lightning_sensitivity.functional import jacobian_norm, loss_gradient_gram  # noqa: E402


def _zoo():
    """``tests/zoo/models.py``, loaded by path (a module named ``zoo`` here would be this script)."""
    path = HERE.parent / "tests" / "zoo" / "models.py"
    spec = importlib.util.spec_from_file_location("zoo_models", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["zoo_models"] = module
    spec.loader.exec_module(module)
    return module


def _short(err: BaseException) -> str:
    text = str(err).replace("\n", " ").removeprefix("`method='layerwise'` cannot handle this model: ")
    text = text if isinstance(err, ValueError) else f"{type(err).__name__}: {text}"
    return text if len(text) <= 110 else text[:107] + "..."


def measure(zoo, name: str, n: int, rounds: int, device: torch.device) -> dict:
    model = zoo.build(name).to(device)
    spec = zoo.ZOO[name]
    if spec.text:
        x, y, kw = zoo.text_batch(n, device=device)
        with torch.no_grad():
            embedded = model.embed(x)
        jac_model, jac_x = zoo.EmbeddedView(model), embedded
    else:
        (x, y), kw = zoo.image_batch(n, device=device), {}
        jac_model, jac_x = model, x
    kwargs = kw or None
    row = {"model": name, "parameters": sum(p.numel() for p in model.parameters()), "n": n}

    def quiet(fn):
        def run():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return fn()

        return run

    try:
        quiet(lambda: loss_gradient_gram(model, x[:2], y[:2], method="layerwise", model_kwargs=_head(kw, 2)))()
        row["engine"] = "layerwise"
    except Exception as err:  # the reason goes into the table
        row["engine"] = f"fallback (layerwise: {_short(err)})"
    gram = quiet(lambda: loss_gradient_gram(model, x, y, model_kwargs=kwargs))
    try:
        gram()
    except Exception as err:
        row["engine"] = f"none: {_short(err)}"
        gram = None

    ref = _deep(model)

    def forward_backward():
        ref.zero_grad(set_to_none=True)
        F.cross_entropy(ref(x, **kw), y).backward()

    def forward():
        with torch.no_grad():
            return jac_model(jac_x, **kw)

    jac = quiet(lambda: jacobian_norm(jac_model, jac_x, model_kwargs=kwargs))
    fns = {"forward_backward": forward_backward, "forward": forward, "jacobian": jac}
    if gram is not None:
        fns["gram"] = gram
    times = {k: statistics.median(v) for k, v in timed(fns, rounds, device).items()}
    classes = zoo.NUM_CLASSES
    row["time_s"] = times
    row["gram_over_limit_G"] = times["gram"] / times["forward_backward"] if gram is not None else None
    row["jacobian_over_limit_J"] = times["jacobian"] / ((1 + classes) * times["forward"])
    return row


def _head(kw: dict, k: int) -> dict | None:
    return {key: v[:k] for key, v in kw.items()} or None


def _deep(model):
    import copy

    return copy.deepcopy(model)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=16, help="examples per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", nargs="*", default=None, help="zoo names (default: all)")
    parser.add_argument("--quick", action="store_true", help="n=4, one round: a smoke run")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this file")
    args = parser.parse_args(argv)
    device = parse_device(parser, args.device)
    torch.set_num_threads(args.threads)
    n, rounds = (4, 1) if args.quick else (args.n, args.rounds)
    zoo = _zoo()
    names = args.models or list(zoo.ZOO)
    unknown = sorted(set(names) - set(zoo.ZOO))
    if unknown:
        parser.error(f"`--models` expected names among {sorted(zoo.ZOO)}, got {unknown}")
    rows = []
    print("| model | parameters | engine | Gram / one forward+backward | Jacobian / (1+C) forwards |")
    print("|---|---:|---|---:|---:|")
    for name in names:
        try:
            __import__(zoo.ZOO[name].requires)
        except ImportError:
            print(f"| {name} | | not installed: {zoo.ZOO[name].requires} | | |")
            continue
        row = measure(zoo, name, n, rounds, device)
        rows.append(row)
        g = row["gram_over_limit_G"]
        print(
            f"| {name} | {row['parameters']:,} | {row['engine']} | {'-' if g is None else f'{g:.2f}x'} | "
            f"{row['jacobian_over_limit_J']:.2f}x |",
            flush=True,
        )
    print(f"\nn={n}, rounds={rounds}, threads={args.threads}; {timing_note(device)}")
    if args.json is not None:
        args.json.write_text(json.dumps({"timing": timing_note(device), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
