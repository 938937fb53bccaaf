package dev.distq;

/** What {@link Session#benchmark} measured. Latencies in milliseconds. */
public final class BenchmarkResult {
    /** Where {@link #joulesPerInference} came from. */
    public enum EnergyMethod {
        /** The energy model (operation counts × per-operation energies): no sensor was readable. */
        MODEL,
        /** Linux powercap RAPL counters. */
        RAPL,
        /** The battery's current × voltage. */
        POWER_SUPPLY,
        /** Pixel on-device power-monitor rails. */
        ODPM
    }

    public final double p50Ms, p90Ms, p99Ms, meanMs, minMs, maxMs;
    /** Inferences per second over the timed runs. */
    public final double throughputPerS;
    /** Energy per inference, joules. */
    public final double joulesPerInference;
    public final EnergyMethod energyMethod;
    /** Peak resident memory of the process during the runs (0 where unknown). */
    public final long peakRssBytes;
    /** The plan's activation arena. */
    public final long arenaBytes;
    public final int iterations, warmup, threads;

    BenchmarkResult(double[] v) {
        p50Ms = v[0];
        p90Ms = v[1];
        p99Ms = v[2];
        meanMs = v[3];
        minMs = v[4];
        maxMs = v[5];
        throughputPerS = v[6];
        joulesPerInference = v[7];
        energyMethod = EnergyMethod.values()[(int) v[8]];
        peakRssBytes = (long) v[9];
        arenaBytes = (long) v[10];
        iterations = (int) v[11];
        warmup = (int) v[12];
        threads = (int) v[13];
    }

    @Override
    public String toString() {
        return String.format("p50 %.3f ms, p90 %.3f ms, p99 %.3f ms, %.1f/s, %.3g J/inference (%s), %d runs",
                p50Ms, p90Ms, p99Ms, throughputPerS, joulesPerInference, energyMethod, iterations);
    }
}
