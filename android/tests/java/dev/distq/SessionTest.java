package dev.distq;

import java.io.FileNotFoundException;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * The Java API in a real JVM (run by android/tests/jvm.rs with -Xcheck:jni):
 *
 *   errors ADD_ONE.onnx   y = x + 1, every error path, several threads; exit 0 if all hold
 *   run MODEL.onnx DIR [THREADS]
 *                         runs MODEL on DIR/inputs.txt, writes DIR/outputs.txt; with THREADS,
 *                         then runs them from THREADS threads at once on the same session,
 *                         every output equal to the first run's byte for byte
 *
 * The manifests have one line per tensor, "name dtype-code rank dims... file".
 */
public final class SessionTest {
    private static int checks = 0;
    private static int failures = 0;

    private static void check(boolean ok, String what) {
        checks++;
        if (!ok) {
            failures++;
            System.err.println("FAILED: " + what);
        }
    }

    private interface Body {
        void run() throws Exception;
    }

    /** {@code body} throws exactly {@code type}, with a message containing {@code part}. */
    private static void expectThrows(Class<? extends Throwable> type, String part, Body body) {
        try {
            body.run();
            check(false, "expected " + type.getSimpleName() + " containing '" + part + "', nothing was thrown");
        } catch (Throwable t) {
            boolean ok = t.getClass() == type && String.valueOf(t.getMessage()).contains(part);
            check(ok, "expected " + type.getSimpleName() + " containing '" + part + "', got " + t);
        }
    }

    private static Map<String, Tensor> one(String name, Tensor t) {
        Map<String, Tensor> m = new LinkedHashMap<>();
        m.put(name, t);
        return m;
    }

    private static void errors(String addOne) throws Exception {
        expectThrows(FileNotFoundException.class, "/nonexistent/model.onnx", () -> Session.load("/nonexistent/model.onnx"));
        expectThrows(DistqException.class, "not a valid ONNX model", () -> Session.fromBytes(new byte[] {-1, -1, -1, -1, -1}));

        // NULL where an object goes: a Java exception naming it, never a crash in native code.
        expectThrows(NullPointerException.class, "path is null", () -> Session.load(null));
        expectThrows(NullPointerException.class, "model bytes are null", () -> Session.fromBytes(null));
        expectThrows(NullPointerException.class, "buffer is null", () -> Tensor.wrap(Tensor.DType.FLOAT32, new long[] {2}, null));

        Session session = Session.load(addOne);
        expectThrows(NullPointerException.class, "inputs are null", () -> session.run(null));
        expectThrows(NullPointerException.class, "null input name or tensor", () -> session.run(one("x", null)));
        check(session.inputNames().length == 1 && session.inputNames()[0].equals("x"), "input names");
        check(session.outputNames()[0].equals("y"), "output names");
        float[] y = session.run(one("x", Tensor.fromFloats(new float[] {1, 2, 3}, 3))).get("y").toFloatArray();
        check(y.length == 3 && y[0] == 2 && y[1] == 3 && y[2] == 4, "y = x + 1");

        expectThrows(IllegalArgumentException.class, "input 'q': is not an input of this model",
                () -> session.run(one("q", Tensor.fromFloats(new float[] {1}, 1))));
        expectThrows(IllegalArgumentException.class, "has dtype int64, the model declares float",
                () -> session.run(one("x", Tensor.fromLongs(new long[] {1}, 1))));
        expectThrows(IllegalArgumentException.class, "input 'x': is missing", () -> session.run(new LinkedHashMap<>()));
        expectThrows(IllegalArgumentException.class, "not direct",
                () -> Tensor.wrap(Tensor.DType.FLOAT32, new long[] {2}, ByteBuffer.allocate(8)));
        expectThrows(IllegalArgumentException.class, "needs 12 bytes, the buffer holds 8",
                () -> Tensor.wrap(Tensor.DType.FLOAT32, new long[] {3}, ByteBuffer.allocateDirect(8)));
        expectThrows(IllegalArgumentException.class, "3 values for shape [2]", () -> Tensor.fromFloats(new float[] {1, 2, 3}, 2));
        expectThrows(IllegalArgumentException.class, "iters is 0",
                () -> session.benchmark(one("x", Tensor.fromFloats(new float[] {1}, 1)), 0));

        // A wrapped buffer is read in place: changing it changes the next run's input.
        ByteBuffer direct = ByteBuffer.allocateDirect(8).order(java.nio.ByteOrder.nativeOrder());
        Tensor wrapped = Tensor.wrap(Tensor.DType.FLOAT32, new long[] {2}, direct);
        direct.asFloatBuffer().put(new float[] {10, 20});
        check(session.run(one("x", wrapped)).get("y").toFloatArray()[1] == 21, "wrapped buffer read in place");

        BenchmarkResult bench = session.benchmark(one("x", Tensor.fromFloats(new float[64], 64)), 20, 2);
        check(bench.iterations == 20 && bench.p50Ms > 0 && bench.p50Ms <= bench.maxMs && bench.joulesPerInference > 0, "benchmark: " + bench);

        // One session, several threads, each with its own shapes and values.
        session.setThreads(2);
        List<Thread> threads = new ArrayList<>();
        List<String> threadFailures = java.util.Collections.synchronizedList(new ArrayList<>());
        for (int t = 0; t < 8; t++) {
            final int id = t;
            threads.add(new Thread(() -> {
                for (int i = 0; i < 100; i++) {
                    float[] x = new float[id * 5 + i % 7 + 1];
                    for (int k = 0; k < x.length; k++) x[k] = id * 1000 + i * 10 + k;
                    float[] out = session.run(one("x", Tensor.fromFloats(x, x.length))).get("y").toFloatArray();
                    for (int k = 0; k < x.length; k++) {
                        if (out[k] != x[k] + 1) threadFailures.add("thread " + id + " run " + i + " element " + k);
                    }
                }
            }));
        }
        for (Thread t : threads) t.start();
        for (Thread t : threads) t.join();
        check(threadFailures.isEmpty(), "threads: " + threadFailures);

        session.close();
        session.close();
        expectThrows(IllegalStateException.class, "the session is closed", () -> session.run(one("x", Tensor.fromFloats(new float[] {1}, 1))));

        System.out.println("java errors: " + checks + " checks, " + failures + " failed");
    }

    private static void run(String model, Path dir, int threads) throws Exception {
        Map<String, Tensor> inputs = new LinkedHashMap<>();
        for (String line : Files.readAllLines(dir.resolve("inputs.txt"))) {
            String[] f = line.trim().split("\\s+");
            int rank = Integer.parseInt(f[2]);
            long[] shape = new long[rank];
            for (int d = 0; d < rank; d++) shape[d] = Long.parseLong(f[3 + d]);
            Tensor t = Tensor.allocate(Tensor.DType.ofCode(Integer.parseInt(f[1])), shape);
            t.buffer().put(Files.readAllBytes(dir.resolve(f[3 + rank])));
            inputs.put(f[0], t);
        }
        StringBuilder manifest = new StringBuilder();
        try (Session session = Session.load(model)) {
            int i = 0;
            for (Map.Entry<String, Tensor> e : session.run(inputs).entrySet()) {
                Tensor t = e.getValue();
                long[] shape = t.shape();
                manifest.append(e.getKey()).append(' ').append(t.dtype().code).append(' ').append(shape.length);
                for (long d : shape) manifest.append(' ').append(d);
                String file = "output" + i++ + ".bin";
                manifest.append(' ').append(file).append('\n');
                ByteBuffer b = t.buffer();
                byte[] bytes = new byte[b.remaining()];
                b.get(bytes);
                Files.write(dir.resolve(file), bytes);
            }
            if (threads > 0) concurrentRuns(session, inputs, threads);
        }
        Files.write(dir.resolve("outputs.txt"), manifest.toString().getBytes("UTF-8"));
        System.out.println("java run: " + inputs.size() + " inputs");
    }

    /** Runs `inputs` from `threads` threads at once on `session` (kernels on 2 threads each):
     *  every output must equal the first run's byte for byte. */
    private static void concurrentRuns(Session session, Map<String, Tensor> inputs, int threads) throws Exception {
        Map<String, Tensor> expected = session.run(inputs);
        session.setThreads(2);
        final int runs = 10;
        List<Thread> started = new ArrayList<>();
        List<String> mismatches = java.util.Collections.synchronizedList(new ArrayList<>());
        for (int t = 0; t < threads; t++) {
            final int id = t;
            started.add(new Thread(() -> {
                for (int i = 0; i < runs; i++) {
                    Map<String, Tensor> got = session.run(inputs);
                    for (Map.Entry<String, Tensor> e : expected.entrySet()) {
                        if (!e.getValue().buffer().equals(got.get(e.getKey()).buffer())) {
                            mismatches.add("thread " + id + " run " + i + " output " + e.getKey());
                        }
                    }
                }
            }));
        }
        for (Thread t : started) t.start();
        for (Thread t : started) t.join();
        check(mismatches.isEmpty(), "runs differing from the first: " + mismatches);
        System.out.println("java threads: " + threads + " threads x " + runs + " runs on one session, " + mismatches.size()
                + " differing from the first run");
    }

    public static void main(String[] args) throws Exception {
        if (args.length == 2 && args[0].equals("errors")) {
            errors(args[1]);
        } else if ((args.length == 3 || args.length == 4) && args[0].equals("run")) {
            run(args[1], Paths.get(args[2]), args.length == 4 ? Integer.parseInt(args[3]) : 0);
        } else {
            System.err.println("usage: SessionTest errors ADD_ONE.onnx | run MODEL.onnx DIR [THREADS]");
            System.exit(2);
        }
        System.exit(failures == 0 ? 0 : 1);
    }
}
