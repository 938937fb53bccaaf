package dev.distq;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.LinkedHashMap;
import java.util.Map;

/** Reads one run's outputs out of the native library, then frees them. */
final class Outputs {
    private Outputs() {}

    /** The outputs behind {@code handle} as tensors in model order; frees the handle. */
    static Map<String, Tensor> take(long handle) {
        try {
            int count = nativeCount(handle);
            Map<String, Tensor> outputs = new LinkedHashMap<>();
            for (int i = 0; i < count; i++) {
                Tensor t = Tensor.allocate(Tensor.DType.ofCode(nativeDtype(handle, i)), nativeShape(handle, i));
                nativeCopy(handle, i, t.directBuffer());
                outputs.put(nativeName(handle, i), t);
            }
            return outputs;
        } finally {
            nativeFree(handle);
        }
    }

    private static native int nativeCount(long handle);

    private static native String nativeName(long handle, int index);

    private static native int nativeDtype(long handle, int index);

    private static native long[] nativeShape(long handle, int index);

    private static native void nativeCopy(long handle, int index, ByteBuffer target);

    private static native void nativeFree(long handle);
}
