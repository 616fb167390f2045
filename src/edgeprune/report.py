"""Tables for people: a profile (or several side by side) as a rich table."""

from __future__ import annotations

from rich.table import Table

from .measure import Profile


def _si(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def profile_table(profiles: dict[str, Profile], title: str = "profile") -> Table:
    """One column per profile; latency rows for every (runtime, batch, threads) measured."""
    table = Table(title=title)
    table.add_column("metric")
    for label in profiles:
        table.add_column(label, justify="right")
    ps = list(profiles.values())

    def row(name: str, fmt) -> None:
        table.add_row(name, *(fmt(p) for p in ps))

    row("top-1 accuracy", lambda p: "—" if p.accuracy is None else f"{100 * p.accuracy:.2f} %")
    row("parameters", lambda p: _si(p.params))
    row("non-zero parameters", lambda p: _si(p.nonzero_params))
    row("sparsity (conv/linear)", lambda p: f"{100 * p.sparsity:.1f} %")
    row("MACs (dense)", lambda p: _si(p.macs))
    row("MACs (effective)", lambda p: _si(p.effective_macs))
    row("size fp32", lambda p: f"{p.bytes_fp32 / 2**20:.2f} MiB")
    row("size gzip", lambda p: f"{p.bytes_gzip / 2**20:.2f} MiB")
    keys = sorted({(t.runtime, t.batch_size, t.threads) for p in ps for t in p.latency})
    for rt, b, th in keys:
        def fmt(p: Profile, rt=rt, b=b, th=th) -> str:
            t = p.latency_of(rt, b, th)
            return "—" if t is None else f"{t.p50_ms:.2f} ms (p90 {t.p90_ms:.2f})"

        row(f"{rt} p50, batch {b}, {th} thread{'s' * (th > 1)}", fmt)
    row("peak inference memory", lambda p: "—" if p.peak_memory_mb is None else f"{p.peak_memory_mb:.1f} MiB")
    if len(ps) > 1:
        _ratio_rows(table, ps, keys)
    return table


def _ratio_rows(table: Table, ps: list[Profile], keys: list[tuple]) -> None:
    """Ratios of every profile to the first (the baseline): how much smaller, cheaper, faster."""
    base = ps[0]
    table.add_section()

    def ratio(a: float | None, b: float | None) -> str:
        return "—" if not a or not b else f"{a / b:.2f}×"

    table.add_row(f"vs {base.model} (first column):", *[""] * len(ps))
    table.add_row("  compression (non-zero params)", *(ratio(base.nonzero_params, p.nonzero_params) for p in ps))
    table.add_row("  size ×smaller (fp32 / gzip)", *(
        f"{ratio(base.bytes_fp32, p.bytes_fp32)} / {ratio(base.bytes_gzip, p.bytes_gzip)}" for p in ps))
    table.add_row("  MACs ×fewer (dense / effective)", *(
        f"{ratio(base.macs, p.macs)} / {ratio(base.effective_macs, p.effective_macs)}" for p in ps))
    for rt, b, th in keys:
        def speed(p: Profile, rt=rt, b=b, th=th) -> str:
            t0, t1 = base.latency_of(rt, b, th), p.latency_of(rt, b, th)
            return ratio(t0 and t0.p50_ms, t1 and t1.p50_ms)

        table.add_row(f"  {rt} speed-up, batch {b}, {th} thr.", *(speed(p) for p in ps))
    table.add_row("  accuracy Δ (points)", *(
        "—" if p.accuracy is None or base.accuracy is None else f"{100 * (p.accuracy - base.accuracy):+.2f}"
        for p in ps))
