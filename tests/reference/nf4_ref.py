"""QLoRA's NF4 quantization in PyTorch, written from bitsandbytes' semantics
(quantize_4bit(quant_type="nf4", blocksize=64), no double quantization):

- the weight is flattened and cut into blocks of 64 (the last may be short);
- absmax = max |x| of a block (float32); each x is scaled by the float32
  reciprocal 1/absmax (bitsandbytes multiplies, it does not divide);
- the code is the number of midpoints between neighbouring NF4 values the
  scaled x exceeds (a value on a midpoint takes the lower code; NaN, from a
  block of zeros, code 0);
- dequantized, an element is NF4[code] * absmax in float32.

The 16 values are the QLoRA paper's NormalFloat quantiles, as bitsandbytes
lists them.
"""
import torch

NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
       -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
       0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0]
BLOCK = 64


def codebook():
    return torch.tensor(NF4, dtype=torch.float32)


def midpoints():
    # computed in double, rounded once to float32
    return torch.tensor([(NF4[i] + NF4[i + 1]) / 2 for i in range(15)], dtype=torch.float64).to(torch.float32)


def quantize(w):
    """(codes int64 [n], absmax float32 [blocks]) of tensor w (any float dtype)."""
    x = w.detach().reshape(-1).to(torch.float32)
    n = x.numel()
    pad = (-n) % BLOCK
    xp = torch.cat([x, torch.zeros(pad, dtype=torch.float32)]).reshape(-1, BLOCK)
    absmax = xp.abs().amax(dim=1)
    inv = torch.ones_like(absmax) / absmax  # float32 reciprocal; 1/0 = inf
    scaled = (xp * inv[:, None]).reshape(-1)[:n]
    codes = (scaled[:, None] > midpoints()[None, :]).sum(dim=1)
    return codes, absmax


def dequantize(codes, absmax, shape):
    n = codes.numel()
    scale = absmax.repeat_interleave(BLOCK)[:n]
    return (codebook()[codes] * scale).reshape(shape)


def roundtrip(w):
    """w's values as an NF4 copy of it reads them back (float32)."""
    codes, absmax = quantize(w)
    return dequantize(codes, absmax, w.shape)
