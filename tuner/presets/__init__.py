"""Model presets: the layers an LLM serves, as data (one TOML file per model in this folder), and
the kernel keys a model expands to at a tensor-parallel size and the batch sizes a server runs.

    name = "mixtral-8x7b"             # what --model takes
    source = "mistralai/Mixtral-8x7B-Instruct-v0.1"
    dtype = "bfloat16"                # what it is served in: the keys' dtype unless --dtype says; a
                                      #   quantized checkpoint's scheme (fp8_w8a8_block128, ...) puts
                                      #   its MoE layers on fused_moe_quant (its dense GEMMs on no
                                      #   kernel here: listed, not keyed)
    config = ["num_local_experts = 8", ...]  # the config.json fields the numbers come from
    [[moe]]                           # fused_moe layers: E experts of intermediate size N (before
    name = "experts"                  #   tensor parallelism), hidden size K, top-k routing
    E = 8; N = 14336; K = 4096; topk = 2
    [[dense]]                         # matmul layers, y = x W with W of K rows and N columns; `split`
    name = "qkv_proj"                 #   names the dimension tensor parallelism divides ("N", "K"
    N = 6144; K = 4096; split = "N"   #   or "none"), `divides` counts it must divide as well (heads)
    divides = [32]
    slices = [4096, 1024, 1024]       #   the output widths of a merged projection's parts (q, k,
                                      #   v; gate, up): LoRA adapts each part, vLLM's num_slices
    kv_heads = 8                      #   a qkv projection's key/value heads (its last two slices):
                                      #   split by tp while tp < kv_heads, else one head a rank,
                                      #   replicated (vLLM's QKVParallelLinear), so tp 16 serves it
A user adds a model with a file of their own (`--model path/to/model.toml`). Keys and tables this
loader does not know (a layer's `layers` count, LoRA targets) are kept in `Model.raw` for whoever
reads them. vLLM shards a MoE layer's intermediate size across tensor-parallel ranks (its config
files are named by N / tp); expert parallelism is not modelled.

With LoRA ranks (`--lora-ranks 8,16,64`) every dense layer also expands to the keys of vLLM's
multi-LoRA kernels: lora_shrink over the layer's input (K, split by tp where the layer splits K),
lora_expand onto its widest slice (split by tp where the layer splits N), SLICES its parts and
LORAS the server's --max-loras at every batch size: vLLM looks its configuration up by the size of
its adapter-slot array, --max-loras + 1 whatever the batch (search_spaces/lora.py `slots`).
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from keys import DTYPES
from search_spaces.fused_moe_vllm import BATCH_SIZES, SCHEMES
from tuner.errors import UserError

HERE = Path(__file__).resolve().parent
SPLITS = ("N", "K", "none")


@dataclass(frozen=True)
class Layer:
    kind: str  # moe | dense
    name: str
    dims: tuple[tuple[str, int], ...]  # moe: E, N, K, topk; dense: N, K
    split: str = "N"  # the dimension tensor parallelism divides
    divides: tuple[int, ...] = ()
    slices: tuple[int, ...] = ()  # dense: the output widths of its merged parts (sum N); () is one part
    kv_heads: int = 0  # a qkv projection's key/value heads (its last two slices); 0: none

    @property
    def parts(self) -> tuple[int, ...]:
        """The output widths LoRA adapts one by one: the slices, or the whole N."""
        return self.slices or (dict(self.dims)["N"],)

    def shard(self, tp: int, model: str) -> tuple[int, ...]:
        """The widths of the parts one of tp ranks computes, N split: every part divided by tp, but a
        qkv projection's k and v, which hold one head a rank once tp reaches kv_heads (vLLM's
        QKVParallelLinear: num_kv_heads = 1, replicated tp / kv_heads times); UserError where tp
        does not divide a part (or kv_heads, or is not a multiple of it)."""
        parts = self.parts
        kv = parts[-2:] if self.kv_heads else ()
        out = []
        for i, width in enumerate(parts):
            if i >= len(parts) - len(kv) and tp >= self.kv_heads:
                if tp % self.kv_heads:
                    raise UserError(f"--tp {tp} is neither a divisor nor a multiple of the {self.kv_heads} key/value "
                                    f"heads of {model}'s {self.name}; use one of: {_divisors(self.kv_heads)} or a "
                                    f"multiple of {self.kv_heads}")
                out.append(width // self.kv_heads)
            elif width % tp:
                what = "a slice" if len(parts) > 1 else "a dimension"
                raise UserError(f"--tp {tp} does not divide {width}, {what} of {model}'s {self.name} "
                                f"that tensor parallelism splits; use a tp that divides it: {_divisors(width)}")
            else:
                out.append(width // tp)
        return tuple(out)


@dataclass(frozen=True)
class Model:
    name: str
    source: str
    dtype: str
    layers: tuple[Layer, ...]
    path: str
    raw: Any  # the whole document, for fields read elsewhere
    config: tuple[str, ...] = ()  # the config.json fields the preset's numbers come from

    def keys(self, tp: int, batch_sizes: tuple[int, ...] = BATCH_SIZES,
             dtype: str | None = None) -> dict[str, list[dict[str, int]]]:
        """kernel -> the key dims (without dtype) of every layer at tensor-parallel size tp and every
        batch size, in dtype (the model's unless given: a quantized scheme keys the MoE layers on
        fused_moe_quant and no dense layer); UserError when tp does not divide a dimension it must."""
        self._check_tp(tp)
        dtype = dtype or self.dtype
        out: dict[str, list[dict[str, int]]] = {}
        for layer in self.layers:
            kernel = layer_kernel(layer.kind, dtype)
            if kernel is None:
                continue
            d = dict(layer.dims)
            split = "N" if layer.kind == "moe" else layer.split
            if split == "N":
                d["N"] = sum(layer.shard(tp, self.name)) if layer.kind == "dense" else d["N"] // tp
                block = SCHEMES[dtype].block if dtype in SCHEMES else None
                if layer.kind == "moe" and block and d["N"] % block[0]:
                    # vLLM's Fp8MoEMethod refuses an intermediate size per rank its weight blocks do not tile
                    raise UserError(f"--tp {tp} leaves {self.name}'s experts N = {d['N']} a rank, which its "
                                    f"{block[0]}-wide weight blocks do not divide; use a smaller tp")
            elif split != "none":
                d[split] //= tp
            for m in batch_sizes:
                _add(out, kernel, {**d, "M": m})
        return out

    def _check_tp(self, tp: int) -> None:
        """UserError when tp is not a size tensor parallelism can split every layer by."""
        if tp < 1:
            raise UserError(f"--tp {tp} is impossible: give the tensor-parallel size, 1 or more")
        for layer in self.layers:
            d = dict(layer.dims)
            split = "N" if layer.kind == "moe" else layer.split
            if layer.kind == "dense" and split == "N":
                layer.shard(tp, self.name)
            for need in ((d[split],) if split == "K" or layer.kind == "moe" else ()) + layer.divides:
                if need % tp:
                    raise UserError(f"--tp {tp} does not divide {need}, a dimension of {self.name}'s {layer.name} "
                                    f"that tensor parallelism splits; use a tp that divides it: {_divisors(need)}")

    def lora_keys(self, tp: int, batch_sizes: tuple[int, ...], ranks: tuple[int, ...],
                  max_loras: int = 1) -> dict[str, list[dict[str, int]]]:
        """lora_shrink and lora_expand -> the key dims of every dense layer's adapters at rank in
        ranks, tensor-parallel size tp (checked by keys()) and every batch size; LORAS is
        max_loras at every batch size, as vLLM's lookup asks."""
        self._check_tp(tp)
        dense = [layer for layer in self.layers if layer.kind == "dense"]
        if not dense:
            raise UserError(f"{self.name} has no dense layer for LoRA adapters; drop --lora-ranks")
        out: dict[str, list[dict[str, int]]] = {}
        for layer in dense:
            d, slices = dict(layer.dims), layer.parts
            k = d["K"] // tp if layer.split == "K" else d["K"]
            n = max(layer.shard(tp, self.name)) if layer.split == "N" else max(slices)
            for rank in ranks:
                for m in batch_sizes:
                    common = {"M": m, "RANK": rank, "SLICES": len(slices), "LORAS": max_loras}
                    _add(out, "lora_shrink", {"M": m, "K": k, **common})
                    _add(out, "lora_expand", {"M": m, "N": n, **common})
        return out

    def lora_slices(self) -> tuple[int, ...]:
        """The num_slices vLLM's LoRA ops run for this model's dense layers (its parts each)."""
        return tuple(sorted({len(layer.parts) for layer in self.layers if layer.kind == "dense"}))

    def serves(self, kernel: str, dims: dict[str, int]) -> bool:
        """Whether some tensor-parallel size and batch size (and LoRA rank) make dims one of the
        model's keys."""
        if kernel in ("lora_shrink", "lora_expand"):
            return any(_lora_serves(layer, kernel, dims) for layer in self.layers if layer.kind == "dense")
        for layer in self.layers:
            d = dict(layer.dims)
            if kernel not in LAYER_KERNELS[layer.kind]:
                continue
            split = "N" if layer.kind == "moe" else layer.split
            fixed = all(dims.get(k) == v for k, v in d.items() if k != split)
            if fixed and (split == "none" or (dims.get(split) and d[split] % dims[split] == 0)):
                return True
        return False


# the kernels a layer runs on: unquantized, and (MoE only) with quantized weights
LAYER_KERNELS = {"moe": ("fused_moe", "fused_moe_quant"), "dense": ("matmul",)}


def layer_kernel(kind: str, dtype: str) -> str | None:
    """The kernel a layer of this kind runs on in dtype; None where none here does (a quantized
    checkpoint's dense GEMMs: vLLM runs them with its own fp8 kernels)."""
    quantized = dtype in SCHEMES
    if kind == "moe":
        return LAYER_KERNELS["moe"][quantized]
    return None if quantized else LAYER_KERNELS["dense"][0]


def _add(out: dict[str, list[dict[str, int]]], kernel: str, dims: dict[str, int]) -> None:
    if dims not in out.setdefault(kernel, []):
        out[kernel].append(dims)


def _lora_serves(layer: Layer, kernel: str, dims: dict[str, int]) -> bool:
    slices = layer.parts
    if dims.get("SLICES") != len(slices):
        return False
    dim, full, split = ("K", dict(layer.dims)["K"], "K") if kernel == "lora_shrink" else ("N", max(slices), "N")
    have = dims.get(dim)
    return bool(have) and (have == full or (layer.split == split and full % have == 0))


def _divisors(n: int) -> str:
    return ", ".join(str(t) for t in (1, 2, 4, 8) if n % t == 0)


def _positive_int(value: Any, where: str) -> int:
    if type(value) is not int or value < 1:
        raise UserError(f"{where} must be a positive integer, got {str(value)[:40]!r}")
    return value


def parse(doc: Any, path: str) -> Model:
    """A model from a preset document; UserError (one line) says what is missing or wrong."""
    where = Path(path).name
    if not isinstance(doc, dict) or not isinstance(doc.get("name"), str) or not doc["name"]:
        raise UserError(f"model file {where} needs name = \"...\"")
    dtype = doc.get("dtype", "bfloat16")
    if dtype not in DTYPES and dtype not in SCHEMES:
        raise UserError(f"{where}: dtype {str(dtype)[:20]!r} is not one of {', '.join((*DTYPES, *SCHEMES))}")
    config = doc.get("config", [])
    if not isinstance(config, list) or not all(isinstance(c, str) for c in config):
        raise UserError(f"{where}: config must be a list of strings (the config.json fields used)")
    layers = []
    for kind, names in (("moe", ("E", "N", "K", "topk")), ("dense", ("N", "K"))):
        entries = doc.get(kind, [])
        if not isinstance(entries, list):
            raise UserError(f"{where}: [[{kind}]] must be a list of tables")
        for i, entry in enumerate(entries):
            at = f"{where} [[{kind}]] #{i + 1}"
            if not isinstance(entry, dict):
                raise UserError(f"{at} must be a table")
            dims = tuple((n, _positive_int(entry.get(n), f"{at} {n}")) for n in names)
            split = entry.get("split", "N")
            if kind == "dense" and split not in SPLITS:
                raise UserError(f"{at}: split must be one of {', '.join(SPLITS)}, got {str(split)[:20]!r}")
            divides = entry.get("divides", [])
            if not isinstance(divides, list):
                raise UserError(f"{at}: divides must be a list of integers")
            if kind == "moe" and dict(dims)["topk"] > dict(dims)["E"]:
                raise UserError(f"{at}: topk is more than E")
            slices = entry.get("slices", []) if kind == "dense" else []
            if not isinstance(slices, list):
                raise UserError(f"{at}: slices must be a list of integers")
            slices = tuple(_positive_int(v, f"{at} slices") for v in slices)
            if slices and sum(slices) != dict(dims)["N"]:
                raise UserError(f"{at}: slices {list(slices)} add up to {sum(slices)}, not N = {dict(dims)['N']}")
            kv_heads = entry.get("kv_heads", 0)
            if kv_heads:
                kv_heads = _positive_int(kv_heads, f"{at} kv_heads")
                if kind != "dense" or split != "N" or len(slices) < 3:
                    raise UserError(f"{at}: kv_heads goes with a qkv projection: split = \"N\" and slices = [q, k, v]")
            layers.append(Layer(kind, str(entry.get("name", f"{kind}{i + 1}")), dims, split,
                                tuple(_positive_int(v, f"{at} divides") for v in divides), slices, kv_heads))
    if not layers:
        raise UserError(f"model file {where} has no [[moe]] or [[dense]] layer")
    return Model(doc["name"], str(doc.get("source", "")), dtype, tuple(layers), str(path), doc, tuple(config))


def _read(path: Path) -> Model:
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read model file {str(path)[:80]}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"model file {str(path)[:80]} is not valid TOML: {exc}") from None
    return parse(doc, str(path))


def names() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.toml"))


def load(name_or_path: str) -> Model:
    """A shipped preset by name, or a model file by path; UserError naming the presets otherwise."""
    text = str(name_or_path).strip()
    if text.endswith(".toml") or "/" in text:
        path = Path(text).expanduser()
        if not path.is_file():
            raise UserError(f"no model file {text[:80]}; give a path to a TOML file or one of: {', '.join(names())}")
        return _read(path)
    path = HERE / f"{text.lower()}.toml"
    if not path.is_file():
        raise UserError(f"unknown model {text[:80]!r}; `tuner models` lists them ({', '.join(names())}), "
                        "or give a path to a model TOML file")
    return _read(path)


def all_models() -> list[Model]:
    return [load(n) for n in names()]


def parse_batch_sizes(text: str | None) -> tuple[int, ...]:
    """'1,2,4' -> (1, 2, 4); None -> vLLM's batch sizes."""
    return BATCH_SIZES if text is None else parse_ints(text, "--batch-sizes", "1,16,256")


def parse_ints(text: str, option: str, example: str) -> tuple[int, ...]:
    """'8,16' -> (8, 16), duplicates dropped; UserError naming option otherwise."""
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if not part.isdigit() or int(part) < 1:
            raise UserError(f"{option} {str(text)[:80]!r}: write positive integers separated by commas, e.g. {example}")
        out.append(int(part))
    return tuple(dict.fromkeys(out))
