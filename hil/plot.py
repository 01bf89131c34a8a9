"""A day's dispatch as a PNG: measured MPC powers, storage energy, price, and baseline costs."""

import sqlite3

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend first: no display on the lab Pi)
import numpy as np  # noqa: E402


#: the policies as the summary and the dashboard name them
_NAMES = {"mpc": "MPC", "naive": "naive rule", "perfect_foresight": "perfect foresight",
          "mpc_perfect_forecast": "MPC with perfect forecasts"}


def _rows(conn, run_id, policy):
    cur = conn.execute("SELECT * FROM dispatch WHERE run_id=? AND policy=? ORDER BY tick", (run_id, policy))
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r)) for r in cur.fetchall()]


def plot_day(db_path, png_path, run_id=None):
    """Plot the latest (or given) run of the store at ``db_path`` into ``png_path``."""
    conn = sqlite3.connect(str(db_path))
    if run_id is None:
        run_id = conn.execute("SELECT max(id) FROM run").fetchone()[0]
    mpc = _rows(conn, run_id, "mpc")
    series = {p: _rows(conn, run_id, p) for p in ("mpc", "naive", "perfect_foresight", "mpc_perfect_forecast")}
    conn.close()
    t = np.array([r["tick"] for r in mpc])
    col = lambda name, rows=mpc: np.array([r[name] if r[name] is not None else np.nan for r in rows])

    fig, ax = plt.subplots(3, 1, figsize=(11, 9), sharex=True)
    for name, label in (("pv_w", "PV"), ("storage_w", "storage (+ discharge)"), ("grid_w", "grid (+ import)"),
                        ("load1_w", "load1 (critical)"), ("load2_w", "load2"), ("load3_w", "load3")):
        ax[0].step(t, col(name), where="post", label=label)
    ax[0].step(t, col("pv_available_w"), where="post", color="gold", ls=":", label="PV available")
    jobs_w = col("deferrable_w") if mpc and "deferrable_w" in mpc[0] else np.zeros(len(t))
    if np.nansum(jobs_w) > 0:     # what load3 drew for deferrable jobs, drawn as a bus power
        ax[0].step(t, -jobs_w, where="post", color="purple", ls="--", label="of which jobs")
    ax[0].axhline(0, color="k", lw=0.5)
    ax[0].set_ylabel("power into bus [W]")
    ax[0].legend(ncol=4, fontsize=8)
    ax[0].set_title("Measured dispatch under MPC on the HIL bench")
    ax[1].plot(t, col("storage_energy_j"), label="storage energy (measured)")
    perfect_foresight = series["perfect_foresight"]
    if perfect_foresight:
        ax[1].plot([r["tick"] for r in perfect_foresight], col("storage_energy_j", perfect_foresight), ls="--", label="perfect foresight")
    perfect_forecast = series["mpc_perfect_forecast"]
    if perfect_forecast:       # the third bench: the MPC with perfect forecasts, measured
        ax[1].plot([r["tick"] for r in perfect_forecast], col("storage_energy_j", perfect_forecast),
                   ls=":", label="MPC with perfect forecasts (measured)")
    ax[1].set_ylabel("energy [J]")
    ax1b = ax[1].twinx()
    ax1b.step(t, col("import_price_per_j"), where="post", color="gray", alpha=0.6, label="import price")
    ax1b.set_ylabel("price [c/J]")
    ax[1].legend(loc="upper left", fontsize=8)
    for p, rows in series.items():
        if rows:
            ax[2].plot([r["tick"] for r in rows], np.cumsum(np.nan_to_num(col("cost", rows))), label=_NAMES[p])
    ax[2].set_ylabel("cumulative bill [c]")
    ax[2].set_xlabel("tick")
    ax[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(str(png_path), dpi=90)
    plt.close(fig)
    return png_path
