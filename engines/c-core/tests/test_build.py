"""The build itself: targets, options, and properties checked on the binaries.

Reference defects covered here: 11 (no exit() in library code, no globals),
15 (never -Ofast / -ffast-math), 16 (no absolute paths; builds chosen by options).
"""

import re
import subprocess

import pytest


def test_make_builds_the_targets(built):
    for name in ("libnano.so", "libnano.a", "nano", "tests/alloc_check"):
        assert (built / name).is_file(), name


def test_abi_version_and_build_info(nano, h):
    header = (h.CORE / "include" / "nano.h").read_text()
    abi = int(re.search(r"#define NANO_ABI_VERSION (\d+)", header).group(1))
    assert nano.lib.nano_abi_version() == abi
    info = nano.ffi.string(nano.lib.nano_build_info()).decode()
    assert f"abi {abi}" in info


def test_status_strings_cover_every_code(nano):
    names = set()
    for st in range(nano.lib.NANO_STATUS_COUNT):
        name = nano.status_name(st)
        text = nano.ffi.string(nano.lib.nano_status_string(st)).decode()
        assert name.startswith("NANO_") and text and name not in names
        assert getattr(nano.lib, name) == st
        names.add(name)
    assert nano.ffi.string(nano.lib.nano_status_string(999)) == b"unknown status"


def _nm(*args):
    return subprocess.run(["nm", *args], capture_output=True, text=True, check=True).stdout


@pytest.mark.outer_only
def test_library_has_no_mutable_globals_and_never_exits(built):
    """Defect 11: no writable data symbols (globals or static locals), no exit()/abort()."""
    out = _nm(str(built / "libnano.a"))
    # objects in writable sections (.data, .bss, common); const tables of pointers sit in .data.rel.ro
    table = subprocess.run(["objdump", "-t", str(built / "libnano.a")], capture_output=True, text=True,
                           check=True).stdout
    writable = [line for line in table.splitlines()
                if re.search(r"\s(\.data(?!\.rel\.ro)\S*|\.bss\S*|\*COM\*)\s", line) and " O " in line]
    assert writable == [], f"mutable global state in libnano.a: {writable}"
    undefined = set(re.findall(r"^\s+U (\S+)$", out, re.M))
    assert not undefined & {"exit", "_exit", "abort", "quick_exit"}, undefined


@pytest.mark.outer_only
def test_exported_symbols_are_prefixed(built):
    out = _nm("-D", "--defined-only", str(built / "libnano.so"))
    names = [line.split()[-1] for line in out.splitlines() if re.match(r"^[0-9a-f]+ T ", line)]
    assert names and all(n.startswith("nano_") for n in names), [n for n in names if not n.startswith("nano_")]


@pytest.mark.outer_only
def test_compiler_flags_never_fast_math(h):
    """Defect 15: the commands make would run use -O2/-O3, never -Ofast or -ffast-math."""
    for extra in ([], ["NATIVE=1"], ["OPENMP=0"], ["SANITIZE=1"]):
        dry = subprocess.run(["make", "-C", str(h.CORE), "-B", "-n", *extra, "all"], capture_output=True,
                             text=True, check=True).stdout
        compiles = [line for line in dry.splitlines() if " -c " in line]
        assert compiles, extra
        for line in compiles:
            assert "-Ofast" not in line and "fast-math" not in line, line
            assert re.search(r"-O[123]\b", line), line
            assert "-ffp-contract=off" in line, line


@pytest.mark.outer_only
def test_no_absolute_paths_in_sources(h):
    """Defect 16: no home-directory or machine paths baked into the engine or its tests."""
    roots = ["home", "Users", "work", "root", "tmp"]
    pattern = re.compile("|".join(re.escape("/" + r + "/") for r in roots))
    checked = 0
    mine = [h.CORE / d for d in ("include", "src", "cli", "tests", "fuzz")]
    files = [p for d in mine for p in d.rglob("*")] + [h.CORE / "Makefile", h.CORE / "README.md"]
    for path in files:
        rel = path.relative_to(h.CORE)
        if not path.is_file() or any(p.startswith(("build", "__pycache__", ".")) for p in rel.parts):
            continue
        if path.suffix in (".c", ".h", ".py", ".md", ".txt") or path.name == "Makefile":
            assert not pattern.search(path.read_text(errors="replace")), rel
            checked += 1
    assert checked > 10


@pytest.mark.outer_only
def test_build_options(h, tmp_path):
    """OPENMP=0 and PLATFORM=stdio builds work (into their own build directories)."""
    for directory, option in h.OTHER_BUILDS.items():
        h.make("lib", f"{directory}/nano", extra=(option, f"BUILD={directory}"))
        sort6 = h.shared_file("fixtures/sort6_f32.bin")
        r = h.run_cli(h.CORE / directory / "nano", "seq2seq", "-m", sort6, "251212")
        assert r.returncode == 0 and r.stdout.strip() == "112225", (option, r)


def test_loaded_library_is_the_requested_build(nano, h):
    """In the sanitizer re-run the harness really has the instrumented library loaded."""
    assert nano.path.parent == h.BUILD
    symbols = _nm("-D", str(nano.path))
    instrumented = "__asan_report" in symbols and "__ubsan_handle" in symbols
    assert instrumented == h.SAN


@pytest.mark.outer_only
def test_cmake_build(h):
    """The optional CMakeLists.txt (for projects that consume the engine through CMake) builds and runs."""
    import shutil

    if shutil.which("cmake") is None:
        pytest.fail("cmake is not installed (python tools/setup/system_deps.py build)", pytrace=False)
    out = h.CORE / "build-cmake"
    env = h.clean_env()
    for cmd in (["cmake", "-S", str(h.CORE), "-B", str(out), "-DCMAKE_BUILD_TYPE=Release"],
                ["cmake", "--build", str(out), "-j", "2"]):
        res = subprocess.run(cmd, capture_output=True, text=True, env=env)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    r = h.run_cli(out / "nano", "seq2seq", "-m", h.shared_file("fixtures/sort6_f32.bin"), "251212")
    assert r.stdout == "112225\n", r


WARN_FLAGS = ["-Wall", "-Wextra", "-Wshadow", "-Wstrict-prototypes", "-Wmissing-prototypes", "-Wno-unknown-pragmas",
              "-Werror"]


def _compilers():
    import shutil

    return [cc for cc in ("gcc", "clang") if shutil.which(cc)]


@pytest.mark.outer_only
@pytest.mark.parametrize("std", ["c99", "c11", "gnu11"])
def test_session_cancel_flag_is_atomic(h, std):
    """nano_session_cancel writes the flag from another thread: an atomic (C11
    atomics, or the GCC/clang builtins in C99), not a volatile sig_atomic_t (a data
    race under C11). session.c compiles warning-free in each standard."""
    ccs = _compilers()
    assert ccs, "no gcc or clang"
    for cc in ccs:
        base = [cc, f"-std={std}", *WARN_FLAGS, "-I", str(h.CORE / "include"), "-I", str(h.CORE / "src")]
        src = str(h.CORE / "src" / "session.c")
        res = subprocess.run([*base, "-fsyntax-only", src], capture_output=True, text=True, env=h.clean_env())
        assert res.returncode == 0, (cc, std, res.stderr[-3000:])
        pre = subprocess.run([*base, "-E", src], capture_output=True, text=True, env=h.clean_env(), check=True).stdout
        body = pre[pre.index("struct nano_session {"):]
        body = body[:body.index("};")]
        assert "volatile" not in body and "sig_atomic_t" not in body, (cc, std, body)
        step = pre[pre.rindex("void nano_session_cancel(nano_session *s) {"):]
        assert "__atomic" in step[:400] or "__c11_atomic" in step[:400], (cc, std, step[:400])


@pytest.mark.outer_only
def test_build_info_abi_comes_from_the_header(h, tmp_path):
    """nano_build_info spells NANO_ABI_VERSION (stringified), not a hard-coded "1":
    common.c built against a header with another ABI version reports that one."""
    header = (h.CORE / "include" / "nano.h").read_text()
    abi = int(re.search(r"#define NANO_ABI_VERSION (\d+)", header).group(1))
    inc = tmp_path / "include"
    inc.mkdir()
    (inc / "nano.h").write_text(header.replace(f"#define NANO_ABI_VERSION {abi}", "#define NANO_ABI_VERSION 73"))
    obj = tmp_path / "common.o"
    cc = _compilers()[0]
    subprocess.run([cc, "-std=c99", "-c", "-I", str(inc), "-I", str(h.CORE / "src"),
                    str(h.CORE / "src" / "common.c"), "-o", str(obj)], check=True, env=h.clean_env())
    data = obj.read_bytes()
    assert b"nano abi 73, " in data
    assert f"nano abi {abi}, ".encode() not in data
