package dev.distq;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.Arrays;
import java.util.Objects;

/**
 * A tensor: an element type, a shape and a direct, native-order {@link ByteBuffer} holding
 * the elements in row-major order. Direct buffers are read in place by the native library, so
 * large inputs are never copied per call: fill one with {@link #allocate} (or wrap your own
 * with {@link #wrap}) and reuse it across runs.
 *
 * <pre>{@code
 * Tensor ids = Tensor.fromLongs(new long[] {101, 7592, 102}, 1, 3);
 * Tensor image = Tensor.allocate(Tensor.DType.FLOAT32, 1, 3, 48, 192);
 * image.buffer().asFloatBuffer().put(pixels);
 * }</pre>
 */
public final class Tensor {
    /** Element types, with their ONNX codes and sizes in bytes. */
    public enum DType {
        FLOAT32(1, 4), UINT8(2, 1), INT8(3, 1), INT32(6, 4), INT64(7, 8), BOOL(9, 1), FLOAT16(10, 2), FLOAT64(11, 8);

        final int code;
        final int size;

        DType(int code, int size) {
            this.code = code;
            this.size = size;
        }

        /** Bytes per element. */
        public int size() {
            return size;
        }

        static DType ofCode(int code) {
            for (DType t : values()) {
                if (t.code == code) return t;
            }
            throw new DistqException("unknown dtype code " + code);
        }
    }

    private final DType dtype;
    private final long[] shape;
    private final ByteBuffer data;

    private Tensor(DType dtype, long[] shape, ByteBuffer data) {
        this.dtype = dtype;
        this.shape = shape.clone();
        this.data = data;
    }

    /** Elements in a tensor of this shape; throws on negative dims or overflow. */
    static long elementCount(long[] shape) {
        long n = 1;
        for (long d : shape) {
            if (d < 0) throw new IllegalArgumentException("negative dim in shape " + Arrays.toString(shape));
            n = Math.multiplyExact(n, d);
        }
        return n;
    }

    private static int byteLength(DType dtype, long[] shape) {
        long bytes = Math.multiplyExact(elementCount(shape), (long) dtype.size);
        if (bytes > Integer.MAX_VALUE) throw new IllegalArgumentException("shape " + Arrays.toString(shape) + " is too large for one buffer");
        return (int) bytes;
    }

    /** A zeroed tensor backed by a new direct buffer in native byte order. */
    public static Tensor allocate(DType dtype, long... shape) {
        ByteBuffer data = ByteBuffer.allocateDirect(byteLength(dtype, shape)).order(ByteOrder.nativeOrder());
        return new Tensor(dtype, shape, data);
    }

    /**
     * Wraps a direct buffer without copying. Its capacity must be exactly the shape's element
     * count times the dtype's size; the native library reads it during each run, so do not
     * change it while a run is in progress.
     */
    public static Tensor wrap(DType dtype, long[] shape, ByteBuffer direct) {
        Objects.requireNonNull(direct, "buffer is null");
        if (!direct.isDirect()) throw new IllegalArgumentException("the buffer is not direct: use ByteBuffer.allocateDirect or Tensor.allocate");
        int expected = byteLength(dtype, shape);
        if (direct.capacity() != expected) {
            throw new IllegalArgumentException(
                    "shape " + Arrays.toString(shape) + " of " + dtype + " needs " + expected + " bytes, the buffer holds " + direct.capacity());
        }
        return new Tensor(dtype, shape, direct.duplicate().order(ByteOrder.nativeOrder()));
    }

    /** A float tensor holding a copy of {@code values}. */
    public static Tensor fromFloats(float[] values, long... shape) {
        Tensor t = allocate(DType.FLOAT32, shape);
        checkCount(values.length, shape);
        t.data.asFloatBuffer().put(values);
        return t;
    }

    /** An int64 tensor holding a copy of {@code values}. */
    public static Tensor fromLongs(long[] values, long... shape) {
        Tensor t = allocate(DType.INT64, shape);
        checkCount(values.length, shape);
        t.data.asLongBuffer().put(values);
        return t;
    }

    /** An int32 tensor holding a copy of {@code values}. */
    public static Tensor fromInts(int[] values, long... shape) {
        Tensor t = allocate(DType.INT32, shape);
        checkCount(values.length, shape);
        t.data.asIntBuffer().put(values);
        return t;
    }

    /** A tensor of one-byte elements ({@code UINT8}, {@code INT8} or {@code BOOL}) holding a copy of {@code values}. */
    public static Tensor fromBytes(DType dtype, byte[] values, long... shape) {
        if (dtype.size != 1) throw new IllegalArgumentException(dtype + " elements are not single bytes");
        Tensor t = allocate(dtype, shape);
        checkCount(values.length, shape);
        t.data.duplicate().put(values);
        return t;
    }

    private static void checkCount(int given, long[] shape) {
        if (given != elementCount(shape)) {
            throw new IllegalArgumentException(given + " values for shape " + Arrays.toString(shape) + " (" + elementCount(shape) + " elements)");
        }
    }

    /** The element type. */
    public DType dtype() {
        return dtype;
    }

    /** The dims (a copy). */
    public long[] shape() {
        return shape.clone();
    }

    /** The element buffer (a view sharing the data, position 0, native order). */
    public ByteBuffer buffer() {
        return data.duplicate().order(ByteOrder.nativeOrder());
    }

    /** The elements as floats (a copy); the dtype must be {@code FLOAT32}. */
    public float[] toFloatArray() {
        expect(DType.FLOAT32);
        float[] out = new float[(int) elementCount(shape)];
        buffer().asFloatBuffer().get(out);
        return out;
    }

    /** The elements as longs (a copy); the dtype must be {@code INT64}. */
    public long[] toLongArray() {
        expect(DType.INT64);
        long[] out = new long[(int) elementCount(shape)];
        buffer().asLongBuffer().get(out);
        return out;
    }

    /** The elements as ints (a copy); the dtype must be {@code INT32}. */
    public int[] toIntArray() {
        expect(DType.INT32);
        int[] out = new int[(int) elementCount(shape)];
        buffer().asIntBuffer().get(out);
        return out;
    }

    private void expect(DType wanted) {
        if (dtype != wanted) throw new IllegalStateException("the tensor holds " + dtype + ", not " + wanted);
    }

    /** The raw direct buffer, for the native calls. */
    ByteBuffer directBuffer() {
        return data;
    }

    @Override
    public String toString() {
        return "Tensor<" + dtype + ">" + Arrays.toString(shape);
    }
}
