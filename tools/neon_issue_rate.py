"""Instructions per MAC of the NEON kernels' hot loops, read from the aarch64 disassembly.

Usage: neon_issue_rate.py OBJDUMP_OUTPUT   (objdump -d -C --no-show-raw-insn of the runtime rlib,
built with -C symbol-mangling-version=v0 so that each const-generic tile has its own name)

For each kernel tile (the largest row count), the loop with the most multiply-accumulate
instructions is its hot loop (innermost among equals). Printed per kernel: the loop's
instructions, its MAC instructions, the MACs one pass does, instructions per 1024 MACs, and
the issue-bound fraction of peak: MAC instructions / all instructions, the share of issue slots
doing arithmetic if the core issued every instruction of the loop at the same rate.
"""

import re
import sys

# Tiles to report: (label, pattern of the demangled symbol that holds the tile's loop). The
# plain-NEON tiles need no extra feature, so they are inlined into the kernel's `tile` method,
# which then holds every row count's loop: the one with the most MAC instructions is the
# widest tile's. The others are `tile::<rows>` functions of their own (v0 demangling:
# `crate[hash]::path::<8>` or `::<8usize>`, depending on the demangler).
def instantiation(path, rows):
    return r"(^|::)" + re.escape(path).replace("::", r"(\[[0-9a-f]+\])?::") + rf"::<{rows}(usize)?>$"


TILES = [
    ("aarch64-neon-gemm-u8i8 (smull, 4 rows)", r"kernels::aarch64::Neon as .*GemmU8I8>::tile$"),
    ("aarch64-dotprod-gemm-u8i8 (sdot, 8 rows)", instantiation("kernels::aarch64::tile_sdot", 8)),
    ("aarch64-i8mm-gemm-u8i8 (usmmla, 8 rows)", instantiation("kernels::aarch64::tile_usmmla", 8)),
    ("aarch64-neon-gemm-f32 (fmla, 4 rows)", r"sgemm::aarch64::NeonFma as .*GemmF32>::tile$"),
]


# MACs per instruction, by mnemonic and arrangement of the destination.
def macs(mnemonic, operands):
    dest = operands.split(",")[0].strip()
    if mnemonic in ("usmmla", "smmla", "ummla"):
        return 32
    if mnemonic in ("sdot", "udot", "sudot", "usdot"):
        return 16
    lanes = {".4s": 4, ".8h": 8, ".2d": 2, ".2s": 2, ".4h": 4}
    arrangement = next((lanes[a] for a in lanes if dest.endswith(a)), 0)
    if mnemonic in ("fmla", "mla", "smlal", "smlal2", "umlal", "umlal2", "smull", "smull2", "umull", "umull2"):
        return arrangement
    return 0


BRANCH = re.compile(r"^(b|b\.\w+|cbz|cbnz|tbz|tbnz)$")


def functions(text):
    """{demangled name: [(address, mnemonic, operands)]}"""
    out, current = {}, None
    for line in text.splitlines():
        head = re.match(r"^[0-9a-f]+ <(.+)>:$", line)
        if head:
            current = out.setdefault(head.group(1), [])
            continue
        insn = re.match(r"^\s+([0-9a-f]+):\s+(\S+)\s*(.*)$", line)
        if insn and current is not None:
            current.append((int(insn.group(1), 16), insn.group(2), insn.group(3)))
    return out


def hot_loop(insns):
    """(instructions, MAC instructions, MACs) of the loop with the most MAC instructions."""
    best = None
    for i, (address, mnemonic, operands) in enumerate(insns):
        if not BRANCH.match(mnemonic):
            continue
        target = re.search(r"\b([0-9a-f]+) <", operands) or re.search(r"(?:^|,\s*)(?:0x)?([0-9a-f]+)$", operands)
        if not target:
            continue
        start = int(target.group(1), 16)
        if start > address:
            continue
        body = [x for x in insns if start <= x[0] <= address]
        mac_insns = [x for x in body if macs(x[1], x[2])]
        key = (len(mac_insns), -len(body))
        if mac_insns and (best is None or key > best[0]):
            best = (key, len(body), len(mac_insns), sum(macs(x[1], x[2]) for x in mac_insns))
    return best[1:] if best else None


def main(path):
    funcs = functions(open(path).read())
    print(f"{'kernel':<44} {'loop insns':>10} {'MAC insns':>9} {'MACs':>6} {'insns/1024 MACs':>16} {'issue-bound':>11}")
    for label, pattern in TILES:
        names = [n for n in funcs if re.search(pattern, n)]
        if not names:
            print(f"{label:<44} not found (no symbol matches {pattern})")
            continue
        loop = hot_loop(funcs[names[0]])
        if loop is None:
            print(f"{label:<44} no loop with MAC instructions")
            continue
        insns, mac_insns, total = loop
        print(f"{label:<44} {insns:>10} {mac_insns:>9} {total:>6} {1024 * insns / total:>16.1f} {mac_insns / insns:>10.0%}")


if __name__ == "__main__":
    main(sys.argv[1])
