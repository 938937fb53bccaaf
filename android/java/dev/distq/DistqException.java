package dev.distq;

/**
 * A failure inside distq that is not the caller's input: a model that is not valid ONNX or
 * uses an unsupported operator, a node that fails while running, or (never expected) a bug,
 * reported instead of crashing the app. Missing files are {@link java.io.FileNotFoundException}s
 * and inputs that do not fit the model {@link IllegalArgumentException}s.
 */
public class DistqException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    public DistqException(String message) {
        super(message);
    }
}
