"""tuner/runtime/decorator.py (`@tuned`) in this process on the CPU, against kernel defaults (fast):
how a launch's arguments become its key (by position, by keyword, through a key function), its
dtype, the errors a wrong declaration or launch gets, and what a launch passes to the kernel.
Written against the survivors of bench/mutation.py."""
import pytest
import torch
import triton

from tests.kernels.tiles import tile_kernel
from tests.kernels.tutorial import softmax_kernel
from tests.test_runtime import live_env  # noqa: F401
from tuner import runtime
from tuner.runtime import tuned
from tuner.runtime.cache import CACHE
from tuner.runtime.decorator import TunedKernel, _dtype_of


def _keys() -> set[tuple]:
    """The cached keys, each as sorted (name, value) pairs."""
    return {tuple(sorted(zip(names, values))) for _, names, values in CACHE}


def test_a_wrong_declaration_is_one_clear_error_naming_the_arguments():
    with pytest.raises(ValueError) as err:
        tuned("tiles", key={"N": "n", "M": "m", "K": "N"})(tile_kernel)
    assert str(err.value) == ("@tuned('tiles') key N='n', M='m' names no argument of tile_kernel (out_ptr, seen_ptr, "
                              "N, BLOCK); map each tuning-key name to an argument, e.g. key={'M': 'n_rows'}, or give "
                              "a function of the arguments")
    with pytest.raises(ValueError) as err:
        tuned("tiles", key=["N", "K"])(tile_kernel)
    assert "key K='K' names no argument of tile_kernel (" in str(err.value)
    with pytest.raises(ValueError) as err:
        tuned("tiles", key=["N"], dtype_arg="x_ptr")(tile_kernel)
    assert str(err.value) == "@tuned('tiles') dtype_arg 'x_ptr' is not an argument of tile_kernel"

    def plain(a, b, N, *rest, flag=1):
        local = a
        return local
    with pytest.raises(ValueError) as err:  # a plain function's arguments: its positional parameters
        TunedKernel(plain, "tiles", ["Q"])
    assert "names no argument of plain (a, b, N);" in str(err.value)
    assert TunedKernel(plain, "tiles", ["N"])._dtype == (0, "a")


def test_a_kernel_is_named_after_its_function():
    assert tuned("tiles", key=["N"])(tile_kernel).__name__ == "tile_kernel"

    class Wrapper:  # e.g. a heuristics wrapper: the name is its inner function's
        fn = tile_kernel.fn
        arg_names = tile_kernel.arg_names
    assert TunedKernel(Wrapper(), "tiles", ["N"]).__name__ == "tile_kernel"

    class Anonymous:
        arg_names = ["N"]
    assert TunedKernel(Anonymous(), "tiles", ["N"]).__name__ == "kernel"
    assert TunedKernel(Anonymous(), "tiles", ["N"])._dtype == (0, "N")

    class Opaque:  # no argument names at all: only a key function can key it, and the dtype is float32
        pass
    opaque = TunedKernel(Opaque(), "tiles", lambda a: {"N": 8})
    assert (opaque._names, opaque._dtype) == ((), (0, ""))


def test_any_collection_of_names_is_a_key():
    for key in (("N",), {"N"}, ["N"]):
        kernel = tuned("tiles", key=key)(tile_kernel)
        assert (kernel._key_fn, kernel._slots) == (None, (("N", 2, "N"),))


def test_the_key_comes_from_positions_keywords_or_a_key_function(live_env):  # noqa: F811
    out, seen = torch.empty(8, dtype=torch.float64), torch.zeros(8, dtype=torch.int64)
    by_list = tuned("tiles", key=["N"])(tile_kernel)
    by_map = tuned("tiles", key={"N": "N"}, dtype_arg="seen_ptr")(tile_kernel)
    by_fn = tuned("tiles", key=lambda a: {"N": a["N"] * 2})(tile_kernel)
    by_fn_dtype = tuned("tiles", key=lambda a: {"N": a["N"] + 1, "dtype": "float16"})(tile_kernel)
    a = by_list.config_for((out, seen, 100), {})
    assert by_list.config_for((out, seen), {"N": 100}) is a  # a keyword where the position is missing
    assert by_list.config_for((), {"out_ptr": out, "seen_ptr": seen, "N": 100}) is a
    assert runtime.lookup("tiles", N=100, dtype="float64") is a  # the dtype is the first argument's
    assert by_map.config_for((out, seen, 101), {}) is runtime.lookup("tiles", N=101, dtype="int64")
    assert by_fn.config_for((out, seen, 51), {}) is runtime.lookup("tiles", N=102, dtype="float64")
    assert by_fn.config_for((out,), {"seen_ptr": seen, "N": 52}) is runtime.lookup("tiles", N=104, dtype="float64")
    assert by_fn_dtype.config_for((out, seen, 102), {}) is runtime.lookup("tiles", N=103, dtype="float16")
    assert _keys() == {(("N", n), ("dtype", d)) for n, d in ((100, "float64"), (101, "int64"), (102, "float64"),
                                                            (104, "float64"), (103, "float16"))}
    for _ in range(2):  # the positional fast path, once the dtype is known, keys the same
        assert by_list.config_for((out, seen, 100), {}) is a
        assert by_list.config_for((out, seen, 100, 16), {}) is a
    with pytest.raises(TypeError) as err:
        by_list.config_for((out, seen), {})
    assert str(err.value) == "tile_kernel[grid](...) was called without 'N', which @tuned reads as the key's N"


def test_a_dtype_first_seen_by_position_keys_its_launch(live_env):  # noqa: F811
    """The first launch of a dtype this process has not named yet takes the keyword path (which
    names it); every later one the positional fast path, from the third argument on here; a key
    of two arguments reads the dtype from its own argument, not from one of the key's."""
    from tuner.runtime import decorator

    kernel = tuned("tiles", key=["N"])(tile_kernel)
    assert kernel._fast_after == 2  # the fast path is there, for launches of three arguments or more
    x16, seen = torch.zeros(8, dtype=torch.int16), torch.zeros(8, dtype=torch.int64)
    decorator._DTYPES.pop(torch.int16, None)
    first = kernel.config_for((x16, seen, 77), {})
    assert decorator._DTYPES[torch.int16] == "int16"
    assert first is runtime.lookup("tiles", N=77, dtype="int16")
    assert kernel.config_for((x16, seen, 77), {}) is first
    softmax = tuned("tutorial_softmax", key={"M": "n_rows", "N": "n_cols"})(softmax_kernel)
    x = torch.zeros(8, 100, dtype=torch.float64)
    for _ in range(2):
        assert softmax.config_for((x, x, 100, 100, 8, 100), {}) is runtime.lookup("tutorial_softmax", M=8, N=100,
                                                                                   dtype="float64")


def test_an_argument_without_a_dtype_keys_as_float32(live_env):  # noqa: F811
    kernel = tuned("tiles", key=["N"], dtype_arg="N")(tile_kernel)
    assert kernel.config_for((None, None, 64), {}) is runtime.lookup("tiles", N=64, dtype="float32")
    from tuner.runtime import decorator

    decorator._DTYPES.pop(torch.uint8, None)
    assert _dtype_of(7) == "float32" and _dtype_of(torch.zeros(1, dtype=torch.uint8)) == "uint8"
    assert _dtype_of(torch.zeros(1, dtype=torch.uint8)) == "uint8"  # the second time from the table


def test_a_launch_passes_the_constexprs_and_options_and_gives_the_grid_the_whole_configuration(live_env):  # noqa: F811
    softmax = tuned("tutorial_softmax", key={"M": "n_rows", "N": "n_cols"})(softmax_kernel)
    config = runtime.lookup("tutorial_softmax", M=8, N=100, dtype="float32")
    assert "PROGRAMS" in config  # a grid-only entry: never passed to the kernel
    x = torch.zeros(8, 100)
    assert softmax.launch_kwargs(x, x, 100, 100, 8, 100) == {k: v for k, v in config.items() if k != "PROGRAMS"}
    assert softmax.launch_kwargs(x, x, 100, 100, n_rows=8, n_cols=100) == softmax.launch_kwargs(x, x, 100, 100, 8, 100)
    kernel = tuned("tiles", key=["N"])(tile_kernel)
    out, seen = torch.full((40,), -1.0), torch.zeros(8, dtype=torch.int64)
    grids = []

    def grid(cfg):
        grids.append(dict(cfg))
        return (triton.cdiv(40, cfg["BLOCK"]),)
    kernel[grid](out, seen, 40)
    block = runtime.lookup("tiles", N=40, dtype="float32")["BLOCK"]
    assert grids == [dict(runtime.lookup("tiles", N=40, dtype="float32"))]
    assert torch.equal(out, torch.arange(40.0)) and set(seen[:triton.cdiv(40, block)].tolist()) == {block}
    seen.zero_()
    kernel[(triton.cdiv(40, block),)](out, seen, N=40)  # a fixed grid, the key by keyword
    assert set(seen[:triton.cdiv(40, block)].tolist()) == {block}


def test_a_launch_passes_its_arguments_and_both_halves_of_the_split(live_env):  # noqa: F811
    """What `kernel[grid](...)` hands the jit function: the caller's arguments, the constexprs and
    the launch options (num_warps is an option the CPU interpreter ignores, so a stand-in for the
    jit function records what it is given)."""
    launched = []

    class Jit:
        __name__ = "tile_kernel"
        arg_names = tile_kernel.arg_names

        def __getitem__(self, grid):
            return lambda *args, **kwargs: launched.append((grid, args, kwargs))

    kernel = tuned("tiles", key=["N"])(Jit())
    config = runtime.lookup("tiles", N=40, dtype="float32")
    kernel[(3,)](None, None, 40, extra=1)
    assert launched == [((3,), (None, None, 40), {"extra": 1, **config})] and set(config) == {"BLOCK", "num_warps"}
