package dev.distq;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.util.Map;
import java.util.Objects;
import java.util.concurrent.locks.ReentrantReadWriteLock;

/**
 * A loaded ONNX model, ready to run. Thread-safe: several threads may call {@link #run} at
 * once; {@link #close} waits for running calls and makes later ones throw
 * {@link IllegalStateException}.
 *
 * <pre>{@code
 * try (Session session = Session.load(modelPath)) {
 *     Map<String, Tensor> outputs = session.run(Map.of("x", Tensor.fromFloats(pixels, 1, 3, 48, 192)));
 *     float[] scores = outputs.get("softmax_0.tmp_0").toFloatArray();
 * }
 * }</pre>
 */
public final class Session implements AutoCloseable {
    static {
        System.loadLibrary("distq_jni");
    }

    private final ReentrantReadWriteLock lock = new ReentrantReadWriteLock();
    private long handle;
    private final String[] inputNames;
    private final String[] outputNames;

    private Session(long handle) {
        this.handle = handle;
        try {
            this.inputNames = nativeNames(handle, false);
            this.outputNames = nativeNames(handle, true);
        } catch (RuntimeException e) {
            nativeFree(handle); // no Session object escapes to close it
            throw e;
        }
    }

    /**
     * Loads the model at {@code path}; its weights stay memory-mapped.
     *
     * @throws java.io.FileNotFoundException if there is no such file
     * @throws IOException if it cannot be read
     * @throws DistqException if it is not a valid ONNX model or uses an unsupported operator
     */
    public static Session load(String path) throws IOException {
        return new Session(nativeLoad(Objects.requireNonNull(path, "path is null")));
    }

    /** Makes a session from model bytes (copied; models with external data need {@link #load}). */
    public static Session fromBytes(byte[] model) {
        Objects.requireNonNull(model, "model bytes are null");
        ByteBuffer direct = ByteBuffer.allocateDirect(model.length);
        direct.put(model);
        return new Session(nativeFromBytes(direct));
    }

    /** The model's input names, in model order. */
    public String[] inputNames() {
        return inputNames.clone();
    }

    /** The model's output names, in model order. */
    public String[] outputNames() {
        return outputNames.clone();
    }

    /** Lets each later run split its kernels over {@code threads} threads (default: the performance cores). */
    public void setThreads(int threads) {
        withHandle(h -> {
            nativeSetThreads(h, threads);
            return null;
        });
    }

    /**
     * Runs the model. Inputs are read in place from their direct buffers.
     *
     * @return the outputs by name, in model order
     * @throws IllegalArgumentException if an input is unknown, missing, or of the wrong dtype or shape
     * @throws DistqException if a node fails
     */
    public Map<String, Tensor> run(Map<String, Tensor> inputs) {
        NativeInputs in = new NativeInputs(inputs);
        long outputs = withHandle(h -> nativeRun(h, in.names, in.dtypes, in.ranks, in.dims, in.buffers));
        return Outputs.take(outputs);
    }

    /** Benchmarks {@code iterations} timed runs after 5 untimed ones; see {@link #benchmark(Map, int, int)}. */
    public BenchmarkResult benchmark(Map<String, Tensor> inputs, int iterations) {
        return benchmark(inputs, iterations, 5);
    }

    /**
     * Runs the model {@code warmup} times untimed, then {@code iterations} times timed, and
     * reports latency percentiles, throughput, peak memory and energy per inference (the best
     * readable power sensor, such as the battery gauge or Pixel power rails, else the energy
     * model).
     */
    public BenchmarkResult benchmark(Map<String, Tensor> inputs, int iterations, int warmup) {
        NativeInputs in = new NativeInputs(inputs);
        double[] values = withHandle(h -> nativeBenchmark(h, in.names, in.dtypes, in.ranks, in.dims, in.buffers, iterations, warmup));
        return new BenchmarkResult(values);
    }

    /** Frees the native session; waits for running calls. Closing twice is harmless. */
    @Override
    public void close() {
        lock.writeLock().lock();
        try {
            nativeFree(handle);
            handle = 0;
        } finally {
            lock.writeLock().unlock();
        }
    }

    private interface HandleCall<T> {
        T call(long handle);
    }

    /** Calls into the native session while no {@link #close} can free it. */
    private <T> T withHandle(HandleCall<T> call) {
        lock.readLock().lock();
        try {
            if (handle == 0) throw new IllegalStateException("the session is closed");
            return call.call(handle);
        } finally {
            lock.readLock().unlock();
        }
    }

    /** Inputs as the parallel arrays the native methods take. */
    private static final class NativeInputs {
        final String[] names;
        final int[] dtypes;
        final int[] ranks;
        final long[] dims;
        final ByteBuffer[] buffers;

        NativeInputs(Map<String, Tensor> inputs) {
            Objects.requireNonNull(inputs, "inputs are null");
            int n = inputs.size(), i = 0, rankSum = 0;
            names = new String[n];
            dtypes = new int[n];
            ranks = new int[n];
            buffers = new ByteBuffer[n];
            for (Map.Entry<String, Tensor> e : inputs.entrySet()) {
                if (e.getKey() == null || e.getValue() == null) throw new NullPointerException("null input name or tensor");
                rankSum += e.getValue().shape().length;
            }
            dims = new long[rankSum];
            int d = 0;
            for (Map.Entry<String, Tensor> e : inputs.entrySet()) {
                Tensor t = e.getValue();
                names[i] = e.getKey();
                dtypes[i] = t.dtype().code;
                long[] shape = t.shape();
                ranks[i] = shape.length;
                System.arraycopy(shape, 0, dims, d, shape.length);
                d += shape.length;
                buffers[i] = t.directBuffer();
                i++;
            }
        }
    }

    private static native long nativeLoad(String path) throws IOException;

    private static native long nativeFromBytes(ByteBuffer model);

    private static native void nativeFree(long handle);

    private static native void nativeSetThreads(long handle, int threads);

    private static native String[] nativeNames(long handle, boolean outputs);

    private static native long nativeRun(long handle, String[] names, int[] dtypes, int[] ranks, long[] dims, ByteBuffer[] buffers);

    private static native double[] nativeBenchmark(
            long handle, String[] names, int[] dtypes, int[] ranks, long[] dims, ByteBuffer[] buffers, int iterations, int warmup);
}
