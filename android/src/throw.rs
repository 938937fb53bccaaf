//! Failures of native methods and the Java exceptions they become.

use distq_runtime::capi::{DistqStatus, panic_message, status_of};
use jni::Env;
use jni::errors::ErrorPolicy;
use jni::strings::JNIString;

/// Why a native method failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The runtime refused or failed (mapped by its status).
    Distq(distq_runtime::Error),
    /// A malformed argument the Java side should have caught.
    Argument(String),
    /// A handle that was already closed.
    Closed(&'static str),
    /// The JNI call itself failed (an exception may be pending).
    Jni(jni::errors::Error),
}

impl From<distq_runtime::Error> for Failure {
    fn from(e: distq_runtime::Error) -> Failure {
        Failure::Distq(e)
    }
}

impl From<jni::errors::Error> for Failure {
    fn from(e: jni::errors::Error) -> Failure {
        Failure::Jni(e)
    }
}

/// The class of the runtime's own exceptions (`dev.distq.DistqException`).
const DISTQ_EXCEPTION: &str = "dev/distq/DistqException";

impl Failure {
    /// The Java exception class and message.
    fn java_exception(&self) -> (&'static str, String) {
        match self {
            Failure::Distq(e) => {
                let class = match (e, status_of(e)) {
                    (distq_runtime::Error::Io { source, .. }, _) if source.kind() == std::io::ErrorKind::NotFound => {
                        "java/io/FileNotFoundException"
                    }
                    (_, DistqStatus::Io) => "java/io/IOException",
                    (_, DistqStatus::Input | DistqStatus::InvalidArgument | DistqStatus::NullArgument) => {
                        "java/lang/IllegalArgumentException"
                    }
                    _ => DISTQ_EXCEPTION,
                };
                (class, e.to_string())
            }
            Failure::Argument(message) => ("java/lang/IllegalArgumentException", message.clone()),
            Failure::Closed(what) => ("java/lang/IllegalStateException", format!("{what} is closed")),
            Failure::Jni(e) => ("java/lang/RuntimeException", format!("JNI call failed: {e}")),
        }
    }
}

/// Throws the failure's Java exception (or leaves an already pending one) and returns the
/// default value; a panic becomes a `DistqException` naming it as a bug.
pub(crate) struct ThrowJava;

fn throw(env: &mut Env<'_>, class: &str, message: &str) {
    if !env.exception_check() {
        // Throwing leaves an exception pending, which is the point; a failure to throw (no
        // such class, out of memory) leaves the JVM's own exception pending instead.
        let _ = env.throw_new(JNIString::from(class), JNIString::from(message));
    }
}

impl<T: Default> ErrorPolicy<T, Failure> for ThrowJava {
    type Captures<'unowned_env_local: 'native_method, 'native_method> = ();

    fn on_error<'unowned_env_local: 'native_method, 'native_method>(
        env: &mut Env<'unowned_env_local>,
        _captures: &mut (),
        failure: Failure,
    ) -> jni::errors::Result<T> {
        let (class, message) = failure.java_exception();
        throw(env, class, &message);
        Ok(T::default())
    }

    fn on_panic<'unowned_env_local: 'native_method, 'native_method>(
        env: &mut Env<'unowned_env_local>,
        _captures: &mut (),
        payload: Box<dyn std::any::Any + Send + 'static>,
    ) -> jni::errors::Result<T> {
        throw(env, DISTQ_EXCEPTION, &panic_message(payload.as_ref()));
        Ok(T::default())
    }
}
