"""torch.compile for robust-sabn: a model compiled in place (evaluation's ``--numerics compiled``, training's
``--compile``), the mode it is compiled in on each device, and the on-disk cache that spares a second run, and each
torchrun process, the compilation.

A model is compiled whole (one graph per shape and mode, by inductor). Its parameters, state dict and copies stay
those of the plain model: ``nn.Module.compile`` compiles only the calls of this one module, and a deep copy (the
folded copy validation scores, the weight average) is plain again. The compiled code is kept in
``<cache>/inductor`` (inductor's FX graph cache and AOT autograd cache, with the compiled kernels), where the cache
folder is ``$ROBUST_SABN_CACHE``, else ``$XDG_CACHE_HOME/robust-sabn`` (``~/.cache/robust-sabn``).

Modes: on the CPU inductor's default (C++ kernels, oneDNN convolutions), with one joint-graph pass,
:func:`recompute_masks`. On CUDA "max-autotune-no-cudagraphs":
Triton kernels with the fastest of several templates for every matrix product and convolution (its first
compilation takes minutes, the cache keeps the choices), without CUDA graphs, which record one graph per input shape
and keep the outputs of one call only until the next, while AutoAttack shrinks its batches at every step and the
training attacks keep earlier outputs.
"""
from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

CACHE_VARIABLE = "ROBUST_SABN_CACHE"
CUDA_MODE = "max-autotune-no-cudagraphs"
# Graphs of one code object that dynamo keeps (its default: 8). Every model compiled in place shares the code of
# nn.Module._call_impl, and each takes a few graphs (modes, shapes), so several live compiled models (bench train's
# variants, say) would exceed the default and fall back to eager.
RECOMPILE_LIMIT = 64


def cache_dir() -> Path:
    """robust-sabn's cache folder: ``$ROBUST_SABN_CACHE``, else ``$XDG_CACHE_HOME/robust-sabn`` (default
    ``~/.cache/robust-sabn``)."""
    if os.environ.get(CACHE_VARIABLE):
        return Path(os.environ[CACHE_VARIABLE]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "robust-sabn"


def configure() -> Path:
    """Set up torch.compile for robust-sabn, process-wide, for compilations from now on: inductor's caches on and in
    ``<cache>/inductor`` (returned), and dynamo's recompile limit at least :data:`RECOMPILE_LIMIT`."""
    import torch._dynamo.config
    import torch._functorch.config
    import torch._inductor.config

    folder = cache_dir() / "inductor"
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    torch._inductor.config.fx_graph_cache = True
    torch._functorch.config.enable_autograd_cache = True
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    return folder


def compile_mode(device: torch.device) -> str | None:
    """The mode of torch.compile on ``device`` (None: inductor's default)."""
    return CUDA_MODE if device.type == "cuda" else None


@functools.cache
def recompute_masks() -> Callable[[torch.fx.Graph], None]:
    """A pass over the joint forward-backward graph: every comparison the backward pass needs (a ReLU's mask, above
    all) is recomputed there from the float tensor it compares, instead of being stored in the forward pass as a bool
    tensor. The masks are the same either way, so the results are too. On the CPU, inductor's vectorized store of a
    bool tensor runs an order of magnitude slower than eager in torch 2.14.1, and every ResNet's attack pass stores
    one such mask (docs/benchmarks.md, "One slow kernel of inductor's own"); recomputing it costs a float tensor of
    memory instead, and about a tenth of a compiled attack pass less time. Made at first use: inductor's module
    takes a second to import."""
    from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files
    from torch.utils.checkpoint import CheckpointPolicy

    comparisons = (torch.ops.aten.le, torch.ops.aten.lt, torch.ops.aten.ge, torch.ops.aten.gt)

    class RecomputeMasks(CustomGraphPass):
        def __call__(self, graph: torch.fx.Graph) -> None:
            for node in graph.nodes:
                if node.op == "call_function" and getattr(node.target, "overloadpacket", None) in comparisons:
                    node.meta["recompute"] = CheckpointPolicy.MUST_RECOMPUTE

        def uuid(self) -> bytes:  # what inductor's caches key the compiled code on: this file's contents
            return get_hash_for_files((__file__,))

    return RecomputeMasks()


def compile_options(device: torch.device) -> dict | None:
    """The inductor settings of torch.compile on ``device``, beside its mode (None: none)."""
    return {"joint_custom_pre_pass": recompute_masks()} if device.type == "cpu" else None


def describe_compilation(device: torch.device) -> str:
    """How a model is compiled on ``device``, in words."""
    return f"torch.compile (inductor, mode {compile_mode(device) or 'default'})"


def compilations() -> int:
    """Graphs compiled in this process so far (cache hits included): a step during which it grows paid a warm-up."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def is_compiled(model: nn.Module) -> bool:
    return getattr(model, "_compiled_call_impl", None) is not None


def compile_in_place(model: nn.Module, device: torch.device, fallback: Callable[[str], None], *,
                     frozen: bool = False) -> nn.Module:
    """Compile ``model``'s calls (``nn.Module.compile``) whole, each call's graph at its first call, and return it.

    ``frozen``: a model no parameter of which requires a gradient, as attacks call it (an evaluation form): the batch
    dimension is symbolic, so one graph serves every batch size AutoAttack's shrinking batches take; a batch of one
    image runs as two copies of it (what the per-image computation of a frozen eval-mode model allows), and a call
    that records no gradient runs as one without gradients, so that two graphs (with and without the input's
    gradient) serve every call. Otherwise every shape and mode gets its own graph. When a call cannot be compiled
    whole (a graph break, an operation inductor fails on), ``fallback`` gets the reason in one line: it may raise,
    else the model runs eager from then on.
    """
    compiled: list[Callable] = []  # made at the first call, so that the first call's time holds all of compiling

    def call(x, *args, **kwargs):
        if frozen and isinstance(x, torch.Tensor) and x.dim() > 0:
            if len(x) == 1:
                return call(torch.cat([x, x]), *args, **kwargs)[:1]
            if torch.is_grad_enabled() and not x.requires_grad:
                with torch.no_grad():
                    return call(x, *args, **kwargs)
        if not compiled:
            configure()
            compiled.append(torch.compile(model._call_impl, fullgraph=True, dynamic=None if frozen else False,
                                          mode=compile_mode(device), options=compile_options(device)))
        if frozen:
            torch._dynamo.maybe_mark_dynamic(x, 0)
        try:
            return compiled[0](x, *args, **kwargs)
        except (torch._dynamo.exc.Unsupported, torch._dynamo.exc.BackendCompilerFailed) as err:
            fallback(f"torch.compile cannot compile {type(model).__name__} whole ({failure(err)})")
            model._compiled_call_impl = None
            return model._call_impl(x, *args, **kwargs)

    model._compiled_call_impl = call  # what nn.Module.compile sets, with the fallback around it
    return model


def failure(err: Exception) -> str:
    """Why a compilation failed, in one line: the error's first line (for a failed backend, its own error's) and the
    innermost line of model code it names."""
    inner = getattr(err, "inner_exception", None)
    text = f"{type(inner).__name__}: {inner}" if inner is not None else str(err)
    place = re.findall(r'File "([^"]+)", line (\d+), in (\w+)', str(err))
    where = f" at {Path(place[-1][0]).name}:{place[-1][1]} in {place[-1][2]}" if place else ""
    return (text.strip().splitlines() or [type(err).__name__])[0].strip() + where
