"""A feed-forward model as one self-contained C99 file: the weights as ``static const float``
arrays and ``void NAME_forward(int n, const float *x, float *y)``.

The model must be a *chain*: every layer takes the previous layer's output and nothing else
(an ``nn.Sequential``, or any module ``torch.fx`` traces to such a chain). Layers understood:
``nn.Linear``; ``BatchNorm1d`` (eval statistics, as a per-feature affine); ``Flatten`` from
dim 1; ``Dropout`` / ``Identity`` (no-ops at inference); ReLU, ReLU6, LeakyReLU, Tanh,
Sigmoid, GELU (exact and tanh), SiLU, ELU; Softmax / LogSoftmax over the last dim of a
(N, F) tensor. Anything else is refused with its name, never compiled into a wrong model.

Why: at batch 1 a small model's latency in PyTorch (or onnxruntime) is mostly the per-call
cost of the framework (~7-20 us here), not arithmetic, so shrinking LeNet-300-100 cannot
give the speedup its FLOPs promise there. A straight-line C function has almost no per-call
cost; its latency is the weights streamed through the cores (``y = W x + b`` per layer).

Pure: :func:`chain` reads a model into :class:`Step` records, :func:`c_source` writes text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UnsupportedLayerError

# Largest model the generator embeds (the source holds ~14 bytes of text per weight), and
# the widest activation (two buffers of it live on the stack).
MAX_PARAMS = 4_000_000
MAX_WIDTH = 262_144

# activation -> C expression of the float ``v`` (``{a}``: the parameter, e.g. LeakyReLU's slope)
ACTIVATIONS = {
    "relu": "v > 0.0f ? v : 0.0f",
    "relu6": "v < 0.0f ? 0.0f : (v > 6.0f ? 6.0f : v)",
    "leaky_relu": "v > 0.0f ? v : {a}f * v",
    "tanh": "tanhf(v)",
    "sigmoid": "1.0f / (1.0f + expf(-v))",
    "gelu": "0.5f * v * (1.0f + erff(v * 0.70710678118654752f))",
    "gelu_tanh": "0.5f * v * (1.0f + tanhf(0.79788456080286536f * (v + 0.044715f * v * v * v)))",
    "silu": "v / (1.0f + expf(-v))",
    "elu": "v > 0.0f ? v : {a}f * (expf(v) - 1.0f)",
}


@dataclass(frozen=True)
class Step:
    """One layer of the chain. ``kind``: linear | affine | act | softmax | log_softmax |
    flatten | identity; ``shape``: the output's shape without the batch axis."""

    kind: str
    name: str
    shape: tuple[int, ...]
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    option: str = ""
    param: float = 0.0


def chain(model: nn.Module, input_shape: tuple[int, ...]) -> list[Step]:
    """``model`` (eval, baked, float) as a list of steps for inputs (N, *input_shape).

    Refuses (:class:`UnsupportedLayerError`) a layer it does not know, a graph that is not a
    chain (residual additions, several inputs) and a model over :data:`MAX_PARAMS`.
    """
    params = sum(p.numel() for p in model.parameters())
    if params > MAX_PARAMS:
        raise UnsupportedLayerError(
            f"the C runtime embeds the weights in the source and takes models up to "
            f"{MAX_PARAMS:,} parameters; this one has {params:,} (use the onnx runtime)"
        )
    shape = tuple(int(s) for s in input_shape)
    steps: list[Step] = []
    for name, op, args, kwargs in _ops(model):
        step = _step(name, op, args, kwargs, shape)
        steps.append(step)
        shape = step.shape
    return steps


def _ops(model: nn.Module):
    """``(name, module or function, extra args, kwargs)`` per layer, in order."""
    if isinstance(model, nn.Sequential):
        for name, child in model._modules.items():  # not named_children: keeps repeats
            if isinstance(child, nn.Sequential):
                yield from ((f"{name}.{n}", *rest) for n, *rest in _ops(child))
            else:
                yield name, child, (), {}
        return
    import torch.fx as fx

    try:
        graph = fx.symbolic_trace(model).graph
    except Exception as exc:
        raise UnsupportedLayerError(
            f"the C runtime needs a model torch.fx can trace ({type(model).__name__}: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}); wrap its layers in an "
            "nn.Sequential or use the onnx runtime"
        ) from None
    yield from _fx_chain(model, graph)


def _fx_chain(model: nn.Module, graph):
    previous = None
    for node in graph.nodes:
        if node.op == "placeholder":
            if previous is not None:
                raise UnsupportedLayerError(
                    "the C runtime takes models with one input; this one has several"
                )
            previous = node
            continue
        if node.op == "output":
            if node.args[0] is not previous:
                raise UnsupportedLayerError(
                    "the C runtime takes models that return one tensor, the last layer's"
                )
            return
        if node.op == "get_attr":
            raise UnsupportedLayerError(
                f"the C runtime runs a chain of layers; {node.target!r} reads a tensor of the "
                "model directly (use the onnx runtime)"
            )
        first, *rest = node.args or (None,)
        inputs = [a for a in (*rest, *node.kwargs.values()) if isinstance(a, torch.fx.Node)]
        if first is not previous or inputs or len(previous.users) != 1:
            raise UnsupportedLayerError(
                f"the C runtime runs a chain of layers, each taking the previous one's output; "
                f"{node.name} ({_what(node)}) does not (residual additions, concatenations "
                "and shape arithmetic need the onnx runtime)"
            )
        if node.op == "call_module":
            yield node.target, model.get_submodule(node.target), tuple(rest), dict(node.kwargs)
        else:
            yield node.name, (node.op, node.target), tuple(rest), dict(node.kwargs)
        previous = node


def _what(node) -> str:
    target = node.target
    return getattr(target, "__name__", str(target))


_MODULE_ACTS = {
    nn.ReLU: "relu", nn.ReLU6: "relu6", nn.LeakyReLU: "leaky_relu", nn.Tanh: "tanh",
    nn.Sigmoid: "sigmoid", nn.SiLU: "silu", nn.ELU: "elu",
}  # fmt: skip
_FUNCTION_ACTS = {
    F.relu: "relu", torch.relu: "relu", F.relu6: "relu6", F.leaky_relu: "leaky_relu",
    torch.tanh: "tanh", F.tanh: "tanh", torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid",
    F.silu: "silu", F.elu: "elu", F.gelu: "gelu",
}  # fmt: skip
_METHOD_ACTS = {"relu": "relu", "tanh": "tanh", "sigmoid": "sigmoid"}


def _step(name: str, op, args: tuple, kwargs: dict, shape: tuple[int, ...]) -> Step:
    """The :class:`Step` of one layer on inputs of ``shape`` (without the batch axis)."""
    if isinstance(op, nn.Module):
        return _module_step(name, op, shape)
    kind, target = op
    if kind == "call_function" and target in _FUNCTION_ACTS:
        act = _FUNCTION_ACTS[target]
        if act == "gelu" and kwargs.get("approximate", "none") == "tanh":
            act = "gelu_tanh"
        slope = {"leaky_relu": 0.01, "elu": 1.0}.get(act, 0.0)
        param = float((args or (kwargs.get("negative_slope", kwargs.get("alpha", slope)),))[0])
        return Step("act", name, shape, option=act, param=param)
    if kind == "call_method" and target in _METHOD_ACTS and not args:
        return Step("act", name, shape, option=_METHOD_ACTS[target])
    if (kind, target) in (("call_function", torch.flatten), ("call_method", "flatten")):
        start = args[0] if args else kwargs.get("start_dim", 0)
        end = args[1] if len(args) > 1 else kwargs.get("end_dim", -1)
        return _flatten(name, int(start), int(end), shape)
    raise UnsupportedLayerError(
        f"the C runtime does not know {name} ({getattr(target, '__name__', target)}); it runs "
        f"Linear, BatchNorm1d, Flatten, Dropout and elementwise activations (use the onnx runtime)"
    )


def _module_step(name: str, m: nn.Module, shape: tuple[int, ...]) -> Step:
    if type(m) is nn.Linear:
        if len(shape) != 1 or shape[0] != m.in_features:
            raise UnsupportedLayerError(
                f"{name}: the C runtime applies Linear to (N, {m.in_features}) inputs, got "
                f"(N, {', '.join(map(str, shape))}); flatten first"
            )
        bias = m.bias if m.bias is not None else torch.zeros(m.out_features)
        tensors = {"weight": m.weight.detach().float(), "bias": bias.detach().float()}
        return Step("linear", name, (m.out_features,), tensors)
    if type(m) is nn.BatchNorm1d:
        return _batchnorm(name, m, shape)
    if type(m) in (nn.Dropout, nn.Identity, nn.AlphaDropout):
        return Step("identity", name, shape)
    if type(m) is nn.Flatten:
        return _flatten(name, m.start_dim, m.end_dim, shape)
    if type(m) in _MODULE_ACTS:
        act = _MODULE_ACTS[type(m)]
        param = {"leaky_relu": getattr(m, "negative_slope", 0.0), "elu": getattr(m, "alpha", 1.0)}
        return Step("act", name, shape, option=act, param=float(param.get(act, 0.0)))
    if type(m) is nn.GELU:
        return Step("act", name, shape, option="gelu_tanh" if m.approximate == "tanh" else "gelu")
    if type(m) in (nn.Softmax, nn.LogSoftmax):
        if len(shape) != 1 or m.dim not in (1, -1):
            raise UnsupportedLayerError(
                f"{name}: the C runtime takes {type(m).__name__} over the last dim of (N, F) "
                f"outputs, got dim={m.dim} on (N, {', '.join(map(str, shape))})"
            )
        kind = "softmax" if type(m) is nn.Softmax else "log_softmax"
        return Step(kind, name, shape)
    raise UnsupportedLayerError(
        f"the C runtime does not know layer {name} ({type(m).__name__}); it runs Linear, "
        "BatchNorm1d, Flatten, Dropout, softmax and elementwise activations "
        "(use the onnx runtime for other layers)"
    )


def _flatten(name: str, start: int, end: int, shape: tuple[int, ...]) -> Step:
    rank = len(shape) + 1
    if start % rank != 1 or end % rank != rank - 1:
        raise UnsupportedLayerError(
            f"{name}: the C runtime flattens from dim 1 to the last (Flatten()), got "
            f"start_dim={start}, end_dim={end}"
        )
    return Step("flatten", name, (math.prod(shape),))


def _batchnorm(name: str, m: nn.BatchNorm1d, shape: tuple[int, ...]) -> Step:
    if m.running_mean is None or shape[0] != m.num_features:
        raise UnsupportedLayerError(
            f"{name}: the C runtime takes BatchNorm1d with running statistics over dim 1 of "
            f"inputs (N, {m.num_features}[, L]); got (N, {', '.join(map(str, shape))})"
        )
    scale = 1.0 / torch.sqrt(m.running_var.double() + m.eps)
    if m.weight is not None:
        scale = scale * m.weight.detach().double()
    shift = -m.running_mean.double() * scale
    if m.bias is not None:
        shift = shift + m.bias.detach().double()
    tensors = {"scale": scale.float(), "shift": shift.float()}
    inner = math.prod(shape[1:])
    return Step("affine", name, shape, tensors, param=float(inner))


# ---------------------------------------------------------------------------------------
# the C text


def c_source(steps: list[Step], input_shape: tuple[int, ...], name: str = "bs_model") -> str:
    """The C99 file of ``steps`` (see the module docstring); ``name`` prefixes the symbols."""
    if not name.isidentifier() or not name.isascii():
        raise UnsupportedLayerError(f"C symbol prefix must be an identifier, got {name!r}")
    n_in = math.prod(input_shape)
    n_out = math.prod(steps[-1].shape) if steps else n_in
    width = max([n_in, *(math.prod(s.shape) for s in steps)])
    if width > MAX_WIDTH:
        raise UnsupportedLayerError(
            f"the C runtime keeps activations on the stack, up to {MAX_WIDTH:,} floats; this "
            f"model has {width:,} (use the onnx runtime)"
        )
    arrays, body = [], []
    for i, step in enumerate(steps):
        for key, t in step.tensors.items():
            arrays.append(_array(f"{step.kind[0]}{i}_{key}", t))
        body.append(_code(i, step))
    layers = ", ".join(_describe(s) for s in steps if s.kind not in ("identity", "flatten"))
    return _TEMPLATE.format(
        name=name, n_in=n_in, n_out=n_out, width=width, layers=layers or "identity",
        shape=" x ".join(map(str, input_shape)), arrays="\n".join(arrays),
        body="\n".join(b for b in body if b),
    )  # fmt: skip


def _describe(step: Step) -> str:
    if step.kind == "linear":
        out, n_in = step.tensors["weight"].shape
        return f"Linear {n_in}->{out}"
    return step.option or step.kind


def _array(symbol: str, t: torch.Tensor) -> str:
    flat = t.reshape(-1).tolist()
    values = [_float(v) for v in flat]
    lines = [",".join(values[i : i + 8]) for i in range(0, len(values), 8)]
    return f"static const float {symbol}[{len(flat)}] = {{\n" + ",\n".join(lines) + "};"


def _float(v: float) -> str:
    if math.isnan(v):
        return "NAN"
    if math.isinf(v):
        return "INFINITY" if v > 0 else "-INFINITY"
    text = f"{v:.9g}"  # 9 significant digits: the float32 back exactly
    return text + ("f" if "." in text or "e" in text else ".0f")


def _code(i: int, step: Step) -> str:
    """Statements turning ``cur`` (input) into ``nxt``, then swapping, for step ``i``."""
    n = math.prod(step.shape)
    tag = f"  /* {step.name}: {_describe(step)} */\n"
    if step.kind in ("identity", "flatten"):
        return ""
    if step.kind == "linear":
        out, n_in = step.tensors["weight"].shape
        return tag + (f"  bs_linear(l{i}_weight, l{i}_bias, cur, nxt, {out}, {n_in});\n  SWAP();")
    if step.kind == "affine":
        inner = int(step.param)
        return tag + (
            f"  for (int j = 0; j < {n}; ++j)\n"
            f"    cur[j] = cur[j] * a{i}_scale[j / {inner}] + a{i}_shift[j / {inner}];"
        )
    if step.kind == "act":
        expr = ACTIVATIONS[step.option].format(a=repr(float(step.param)))
        return tag + f"  for (int j = 0; j < {n}; ++j) {{ float v = cur[j]; cur[j] = {expr}; }}"
    log = step.kind == "log_softmax"
    return tag + f"  bs_softmax(cur, {n}, {int(log)});"


_TEMPLATE = """\
/* Generated by brainsurgeon (C runtime): {layers}.
 *
 *   void {name}_forward(int n, const float *x, float *y);
 *
 * x: n inputs of {shape} = {n_in} floats each, row-major (as a contiguous torch tensor);
 * y: n outputs of {n_out} floats each. Reentrant (no globals are written), no allocation.
 * Build: cc -O3 -march=native -fno-math-errno -fno-trapping-math -fassociative-math
 *        -fno-signed-zeros -c model.c   (the same flags brainsurgeon's runtime uses) */
#include <math.h>

#define BS_IN {n_in}
#define BS_OUT {n_out}
#define BS_WIDTH {width}
#define SWAP() do {{ float *t_ = cur; cur = nxt; nxt = t_; }} while (0)

{arrays}

/* y = W x + b, W row-major (out, in); four rows at a time (four independent sums). */
static inline void bs_linear(const float *restrict w, const float *restrict b,
                             const float *restrict x, float *restrict y, int out, int in) {{
  int o = 0;
  for (; o + 4 <= out; o += 4) {{
    const float *w0 = w + (long)o * in, *w1 = w0 + in, *w2 = w1 + in, *w3 = w2 + in;
    float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
    for (int i = 0; i < in; ++i) {{
      float v = x[i];
      s0 += w0[i] * v; s1 += w1[i] * v; s2 += w2[i] * v; s3 += w3[i] * v;
    }}
    y[o] = s0 + b[o]; y[o + 1] = s1 + b[o + 1]; y[o + 2] = s2 + b[o + 2]; y[o + 3] = s3 + b[o + 3];
  }}
  for (; o < out; ++o) {{
    const float *w0 = w + (long)o * in;
    float s0 = 0.0f;
    for (int i = 0; i < in; ++i) s0 += w0[i] * x[i];
    y[o] = s0 + b[o];
  }}
}}

static inline void bs_softmax(float *v, int n, int log_out) {{
  float m = v[0], s = 0.0f;
  for (int j = 1; j < n; ++j) m = v[j] > m ? v[j] : m;
  for (int j = 0; j < n; ++j) s += expf(v[j] - m);
  float ls = logf(s);
  for (int j = 0; j < n; ++j) v[j] = log_out ? v[j] - m - ls : expf(v[j] - m - ls);
}}

static void bs_forward_one(const float *restrict x, float *restrict y) {{
  float a[BS_WIDTH], b[BS_WIDTH];
  float *cur = a, *nxt = b;
  for (int j = 0; j < BS_IN; ++j) cur[j] = x[j];
{body}
  for (int j = 0; j < BS_OUT; ++j) y[j] = cur[j];
}}

void {name}_forward(int n, const float *x, float *y) {{
  for (int k = 0; k < n; ++k) bs_forward_one(x + (long)k * BS_IN, y + (long)k * BS_OUT);
}}

int {name}_in_features(void) {{ return BS_IN; }}
int {name}_out_features(void) {{ return BS_OUT; }}
"""
