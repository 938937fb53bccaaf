//! The ABI exercised as C would: statuses, last-error messages, NULL and size misuse,
//! outputs that must not alias caller memory, and one session shared by several threads.

use super::*;
use crate::DataType;
use crate::testing::{ModelBuilder, add_one_model};
use std::ffi::{CStr, c_void};
use std::ptr::{null, null_mut};

fn last_error() -> String {
    // Safety: distq_last_error returns a valid NUL-terminated string.
    unsafe { CStr::from_ptr(distq_last_error()) }.to_string_lossy().into_owned()
}

fn session_of(model: Vec<u8>) -> *mut DistqSession {
    let mut session = null_mut();
    // Safety: valid bytes and out pointer.
    assert_eq!(unsafe { distq_session_from_bytes(model.as_ptr(), model.len(), &mut session) }, DistqStatus::Ok);
    session
}

fn f32_input(name: &CStr, shape: &[i64], data: &[f32]) -> DistqTensor {
    DistqTensor {
        name: name.as_ptr(),
        dtype: DISTQ_DTYPE_FLOAT,
        shape: shape.as_ptr(),
        rank: shape.len(),
        data: data.as_ptr().cast(),
        byte_len: std::mem::size_of_val(data),
    }
}

/// Runs `session` and returns output 0 as floats, or the failing status.
fn run_first(session: *const DistqSession, inputs: &[DistqTensor]) -> Result<Vec<f32>, DistqStatus> {
    let mut outputs = null_mut();
    // Safety: inputs point to live data for the call.
    let status = unsafe { distq_session_run(session, inputs.as_ptr(), inputs.len(), &mut outputs) };
    if status != DistqStatus::Ok {
        assert!(outputs.is_null(), "a failed run leaves out NULL");
        return Err(status);
    }
    let mut view = DistqTensor { name: null(), dtype: 0, shape: null(), rank: 0, data: null(), byte_len: 0 };
    // Safety: outputs is live until freed below.
    assert_eq!(unsafe { distq_outputs_get(outputs, 0, &mut view) }, DistqStatus::Ok);
    assert_eq!(view.dtype, DISTQ_DTYPE_FLOAT);
    let values = unsafe { std::slice::from_raw_parts(view.data as *const f32, view.byte_len / 4) }.to_vec();
    distq_outputs_free(outputs);
    Ok(values)
}

#[test]
fn runs_a_model_and_names_its_inputs_and_outputs() {
    let session = session_of(add_one_model());
    let (mut n, mut name) = (0usize, null());
    // Safety: a live session and valid out pointers throughout.
    unsafe {
        assert_eq!(distq_session_input_count(session, &mut n), DistqStatus::Ok);
        assert_eq!(n, 1);
        assert_eq!(distq_session_input_name(session, 0, &mut name), DistqStatus::Ok);
        assert_eq!(CStr::from_ptr(name), c"x");
        assert_eq!(distq_session_output_name(session, 0, &mut name), DistqStatus::Ok);
        assert_eq!(CStr::from_ptr(name), c"y");
        assert_eq!(distq_session_output_name(session, 1, &mut name), DistqStatus::InvalidArgument);
        assert!(name.is_null());
        assert!(last_error().contains("index 1 is out of range"), "{}", last_error());
    }
    let x = [1f32, 2.0, 3.0];
    assert_eq!(run_first(session, &[f32_input(c"x", &[3], &x)]), Ok(vec![2.0, 3.0, 4.0]));

    let mut outputs = null_mut();
    let mut view = DistqTensor { name: null(), dtype: 0, shape: null(), rank: 0, data: null(), byte_len: 0 };
    // Safety: as above.
    unsafe {
        assert_eq!(distq_session_run(session, &f32_input(c"x", &[3], &x), 1, &mut outputs), DistqStatus::Ok);
        assert_eq!(distq_outputs_find(outputs, c"y".as_ptr(), &mut view), DistqStatus::Ok);
        assert_eq!((view.rank, *view.shape, view.byte_len), (1, 3, 12));
        assert_eq!(distq_outputs_find(outputs, c"z".as_ptr(), &mut view), DistqStatus::InvalidArgument);
        assert!(last_error().contains("no output is called 'z' (the outputs are: y)"), "{}", last_error());
        distq_outputs_free(outputs);
        distq_session_free(session);
    }
}

#[test]
fn load_and_decode_failures_name_the_problem() {
    let mut session = std::ptr::dangling_mut::<DistqSession>();
    // Safety: valid strings and out pointer.
    let status = unsafe { distq_session_load(c"/nonexistent/model.onnx".as_ptr(), &mut session) };
    assert_eq!(status, DistqStatus::Io);
    assert!(session.is_null(), "a failed load leaves out NULL");
    assert!(last_error().contains("/nonexistent/model.onnx"), "{}", last_error());

    let garbage = [0xffu8; 16];
    // Safety: as above.
    let status = unsafe { distq_session_from_bytes(garbage.as_ptr(), garbage.len(), &mut session) };
    assert_eq!(status, DistqStatus::InvalidModel);
    assert!(last_error().contains("not a valid ONNX model"), "{}", last_error());
}

#[test]
fn null_arguments_are_refused_not_dereferenced() {
    let session = session_of(add_one_model());
    let (mut n, mut out_session, mut outputs) = (7usize, null_mut(), null_mut());
    let mut bench = DistqBenchmark::default();
    // Safety: every pointer is either valid or NULL, which is what is tested.
    unsafe {
        assert_eq!(distq_session_load(null(), &mut out_session), DistqStatus::NullArgument);
        assert!(last_error().contains("path is NULL"));
        assert_eq!(distq_session_load(c"m.onnx".as_ptr(), null_mut()), DistqStatus::NullArgument);
        assert_eq!(distq_session_from_bytes(null(), 4, &mut out_session), DistqStatus::NullArgument);
        assert_eq!(distq_session_input_count(null(), &mut n), DistqStatus::NullArgument);
        assert_eq!(n, 0);
        assert_eq!(distq_session_set_threads(null(), 2), DistqStatus::NullArgument);
        assert_eq!(distq_session_run(null(), null(), 0, &mut outputs), DistqStatus::NullArgument);
        assert!(last_error().contains("session is NULL"));
        assert_eq!(distq_session_run(session, null(), 1, &mut outputs), DistqStatus::NullArgument);
        assert!(last_error().contains("inputs is NULL but count is 1"));
        assert_eq!(distq_session_run(session, null(), 0, null_mut()), DistqStatus::NullArgument);
        assert_eq!(distq_outputs_count(null(), &mut n), DistqStatus::NullArgument);
        assert_eq!(distq_outputs_get(null(), 0, null_mut()), DistqStatus::NullArgument);
        assert_eq!(distq_outputs_find(null(), null(), null_mut()), DistqStatus::NullArgument);
        assert_eq!(distq_session_benchmark(null(), null(), 0, 1, 0, &mut bench), DistqStatus::NullArgument);
        let unnamed = DistqTensor { name: null(), dtype: DISTQ_DTYPE_FLOAT, shape: null(), rank: 0, data: null(), byte_len: 0 };
        assert_eq!(distq_session_run(session, &unnamed, 1, &mut outputs), DistqStatus::NullArgument);
        assert!(last_error().contains("inputs[0].name is NULL"));
        let no_data = DistqTensor { data: null(), ..f32_input(c"x", &[2], &[0.0; 2]) };
        assert_eq!(distq_session_run(session, &no_data, 1, &mut outputs), DistqStatus::NullArgument);
        assert!(last_error().contains("input 'x': data is NULL but byte_len is 8"));
        distq_session_free(null_mut());
        distq_outputs_free(null_mut());
        distq_session_free(session);
    }
}

#[test]
fn inputs_that_do_not_fit_the_model_are_refused() {
    let session = session_of(add_one_model());
    let x = [1f32, 2.0];
    let cases: Vec<(DistqTensor, DistqStatus, &str)> = vec![
        (f32_input(c"q", &[2], &x), DistqStatus::Input, "input 'q': is not an input of this model (its inputs are: x)"),
        (
            DistqTensor { dtype: DISTQ_DTYPE_INT32, ..f32_input(c"x", &[2], &x) },
            DistqStatus::Input,
            "has dtype int32, the model declares float",
        ),
        (DistqTensor { dtype: 99, ..f32_input(c"x", &[2], &x) }, DistqStatus::InvalidArgument, "dtype code 99 is not one of"),
        (f32_input(c"x", &[-2], &x), DistqStatus::InvalidArgument, "input 'x': dim 0 is -2"),
        (f32_input(c"x", &[3], &x), DistqStatus::Input, "needs 12 bytes of raw data, got 8"),
        (DistqTensor { rank: 1, shape: null(), ..f32_input(c"x", &[2], &x) }, DistqStatus::NullArgument, "shape is NULL but rank is 1"),
    ];
    for (input, status, message) in cases {
        assert_eq!(run_first(session, &[input]), Err(status), "{message}");
        assert!(last_error().contains(message), "expected '{message}' in '{}'", last_error());
    }
    assert_eq!(run_first(session, &[]), Err(DistqStatus::Input));
    assert!(last_error().contains("input 'x': is missing"), "{}", last_error());
    distq_session_free(session);
}

#[test]
fn outputs_do_not_alias_caller_memory() {
    // y = Identity(x): the runtime's output is the input tensor itself.
    let model = ModelBuilder::new(17)
        .input("x", DataType::F32, &[2])
        .node("Identity", &["x"], &["y"], vec![])
        .output("y", DataType::F32, &[2])
        .to_bytes();
    let session = session_of(model);
    let mut x = vec![5f32, 6.0];
    let mut outputs = null_mut();
    let mut view = DistqTensor { name: null(), dtype: 0, shape: null(), rank: 0, data: null(), byte_len: 0 };
    // Safety: x is live during the run; outputs until freed.
    unsafe {
        assert_eq!(distq_session_run(session, &f32_input(c"x", &[2], &x), 1, &mut outputs), DistqStatus::Ok);
        assert_eq!(distq_outputs_get(outputs, 0, &mut view), DistqStatus::Ok);
    }
    assert_ne!(view.data, x.as_ptr() as *const c_void);
    x.iter_mut().for_each(|v| *v = -1.0);
    drop(x);
    // Safety: view stays valid until the outputs are freed.
    assert_eq!(unsafe { std::slice::from_raw_parts(view.data as *const f32, 2) }, &[5.0, 6.0]);
    distq_outputs_free(outputs);
    distq_session_free(session);
}

/// A session handle shared with threads.
struct Shared(*mut DistqSession);
// Safety: the ABI documents sessions as usable from several threads.
unsafe impl Sync for Shared {}

#[test]
fn one_session_runs_from_several_threads_at_once() {
    let session = Shared(session_of(add_one_model()));
    assert_eq!(distq_session_set_threads(session.0, 2), DistqStatus::Ok);
    std::thread::scope(|s| {
        for t in 0..8 {
            let session = &session;
            s.spawn(move || {
                for i in 0..50 {
                    // Each thread and iteration has its own length (its own plan) and values.
                    let x: Vec<f32> = (0..(t * 7 + i % 5 + 1)).map(|k| (t * 1000 + i * 10 + k) as f32).collect();
                    let y = run_first(session.0, &[f32_input(c"x", &[x.len() as i64], &x)]).expect("run");
                    assert_eq!(y, x.iter().map(|v| v + 1.0).collect::<Vec<_>>(), "thread {t} run {i}");
                }
            });
        }
    });
    distq_session_free(session.0);
}

#[test]
fn freed_forged_and_wrong_kind_handles_are_refused() {
    let session = session_of(add_one_model());
    let x = [1f32, 2.0];
    let mut outputs = null_mut();
    // Safety: x is live for the run.
    assert_eq!(unsafe { distq_session_run(session, &f32_input(c"x", &[2], &x), 1, &mut outputs) }, DistqStatus::Ok);
    let mut n = 0;
    // An outputs handle where a session goes, and the other way round.
    // Safety: only handles and valid out pointers are passed.
    unsafe {
        assert_eq!(distq_session_input_count(outputs as *const DistqSession, &mut n), DistqStatus::InvalidArgument);
        assert!(last_error().contains("is not a live session handle"), "{}", last_error());
        assert_eq!(distq_outputs_count(session as *const DistqOutputs, &mut n), DistqStatus::InvalidArgument);
        assert_eq!(distq_session_input_count(0xdead_beef as *const DistqSession, &mut n), DistqStatus::InvalidArgument);
    }
    distq_outputs_free(outputs);
    distq_outputs_free(outputs);
    // Safety: valid out pointer.
    assert_eq!(unsafe { distq_outputs_count(outputs, &mut n) }, DistqStatus::InvalidArgument);
    assert!(last_error().contains("is not a live outputs handle (freed already"), "{}", last_error());
    distq_session_free(session);
    distq_session_free(session);
    assert_eq!(run_first(session, &[f32_input(c"x", &[2], &x)]), Err(DistqStatus::InvalidArgument));
    assert!(last_error().contains("freed already"), "{}", last_error());
    // A new session may reuse the slot, but not the handle.
    let again = session_of(add_one_model());
    assert_ne!(again, session);
    assert_eq!(run_first(session, &[f32_input(c"x", &[2], &x)]), Err(DistqStatus::InvalidArgument));
    assert_eq!(run_first(again, &[f32_input(c"x", &[2], &x)]), Ok(vec![2.0, 3.0]));
    distq_session_free(again);
}

#[test]
fn freeing_a_session_while_threads_run_it_is_safe() {
    let session = Shared(session_of(add_one_model()));
    let x: Vec<f32> = (0..4096).map(|i| i as f32).collect();
    std::thread::scope(|s| {
        let runners: Vec<_> = (0..4)
            .map(|_| {
                let (session, x) = (&session, &x);
                s.spawn(move || {
                    // Every run either completes correctly or is refused once the free lands.
                    let mut completed = 0;
                    while let Ok(y) = run_first(session.0, &[f32_input(c"x", &[x.len() as i64], x)]) {
                        assert_eq!(y[4095], 4096.0);
                        completed += 1;
                    }
                    completed
                })
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(20));
        distq_session_free(session.0);
        for r in runners {
            r.join().unwrap();
        }
    });
}

#[test]
fn benchmark_reports_latency_and_energy() {
    let session = session_of(add_one_model());
    let x = [1f32; 64];
    let input = f32_input(c"x", &[64], &x);
    let mut bench = DistqBenchmark::default();
    // Safety: live session, input and out pointer.
    unsafe {
        assert_eq!(distq_session_benchmark(session, &input, 1, 0, 0, &mut bench), DistqStatus::InvalidArgument);
        assert!(last_error().contains("iters is 0"), "{}", last_error());
        assert_eq!(distq_session_benchmark(session, &input, 1, 20, 2, &mut bench), DistqStatus::Ok);
        distq_session_free(session);
    }
    // A new session runs on the performance cores.
    assert_eq!((bench.iters, bench.warmup, bench.threads), (20, 2, crate::performance_cores()));
    assert!(bench.min_ms > 0.0 && bench.min_ms <= bench.p50_ms && bench.p50_ms <= bench.p99_ms && bench.p99_ms <= bench.max_ms);
    assert!(bench.throughput_per_s > 0.0 && bench.joules_per_inference > 0.0);
}

#[test]
fn panics_become_internal_errors() {
    let status = entry(|| panic!("kernel table is empty"));
    assert_eq!(status, DistqStatus::Internal);
    assert!(last_error().contains("a bug in distq") && last_error().contains("kernel table is empty"), "{}", last_error());
}

#[test]
fn version_is_the_crate_version() {
    // Safety: a static NUL-terminated string.
    assert_eq!(unsafe { CStr::from_ptr(distq_version()) }.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
}

/// Generation through the ABI, on the toy bigram decoder (after token `t`, `3t + 1 mod 8`)
/// with a word-level tokenizer of its 8 tokens `w0`..`w7`.
#[cfg(feature = "text")]
mod generation {
    use super::*;

    fn generator_dir(with_tokenizer: bool) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("model.onnx"), crate::testing::bigram_decoder(false)).unwrap();
        if with_tokenizer {
            std::fs::write(dir.path().join("tokenizer.json"), crate::testing::bigram_tokenizer_json()).unwrap();
        }
        dir
    }

    fn load(dir: &tempfile::TempDir) -> (DistqStatus, *mut DistqGenerator) {
        let path = std::ffi::CString::new(dir.path().join("model.onnx").to_str().unwrap()).unwrap();
        let mut generator = null_mut();
        // Safety: a valid path and out pointer.
        (unsafe { distq_generator_load(path.as_ptr(), &mut generator) }, generator)
    }

    /// Collects the pieces; stops (returns 1) once it holds `stop_after` of them.
    struct Pieces {
        text: Vec<String>,
        stop_after: usize,
    }

    unsafe extern "C" fn collect(text: *const c_char, len: usize, user_data: *mut c_void) -> i32 {
        // Safety: the ABI passes `len` bytes of UTF-8 and our `Pieces`.
        let (bytes, pieces) = unsafe { (std::slice::from_raw_parts(text.cast::<u8>(), len), &mut *user_data.cast::<Pieces>()) };
        pieces.text.push(String::from_utf8(bytes.to_vec()).unwrap());
        i32::from(pieces.text.len() >= pieces.stop_after)
    }

    fn generate(
        generator: *mut DistqGenerator,
        prompt: &CStr,
        options: &DistqGenerateOptions,
        stop_after: usize,
    ) -> (DistqStatus, Pieces, DistqGenerateStats) {
        let mut pieces = Pieces { text: Vec::new(), stop_after };
        let mut stats = DistqGenerateStats {
            prompt_tokens: 0,
            generated_tokens: 0,
            time_to_first_token_ms: 0.0,
            decode_tokens_per_s: 0.0,
            end: DistqGenerateEnd::MaxTokens,
        };
        let user_data = (&mut pieces as *mut Pieces).cast();
        // Safety: valid strings, options, callback state and stats for the call.
        let status = unsafe { distq_generate(generator, prompt.as_ptr(), options, Some(collect), user_data, &mut stats) };
        (status, pieces, stats)
    }

    #[test]
    fn text_streams_to_the_callback_which_can_stop_it() {
        let dir = generator_dir(true);
        let (status, generator) = load(&dir);
        assert_eq!(status, DistqStatus::Ok, "{}", last_error());
        let options = DistqGenerateOptions { max_tokens: 4, ..distq_generate_options_default() };
        // After w2: 7, 6, 3, 2; word-level pieces are joined by spaces.
        let (status, pieces, stats) = generate(generator, c"w2", &options, usize::MAX);
        assert_eq!(status, DistqStatus::Ok, "{}", last_error());
        assert_eq!(pieces.text.concat(), "w7 w6 w3 w2");
        assert_eq!(pieces.text.len(), 4, "one piece per token: {:?}", pieces.text);
        assert_eq!((stats.prompt_tokens, stats.generated_tokens, stats.end), (1, 4, DistqGenerateEnd::MaxTokens));
        assert!(stats.time_to_first_token_ms > 0.0 && stats.decode_tokens_per_s > 0.0);

        let (status, pieces, stats) = generate(generator, c"w2 w7", &options, 2);
        assert_eq!(status, DistqStatus::Ok, "{}", last_error());
        assert_eq!(pieces.text.concat(), "w6 w3");
        assert_eq!((stats.prompt_tokens, stats.generated_tokens, stats.end), (2, 2, DistqGenerateEnd::Stopped));

        // NULL options mean the defaults (greedy, 256 tokens), NULL callback and stats are fine.
        // Safety: a valid prompt; the rest NULL.
        assert_eq!(unsafe { distq_generate(generator, c"w1".as_ptr(), null(), None, null_mut(), null_mut()) }, DistqStatus::Ok);
        distq_generator_free(generator);
    }

    #[test]
    fn bad_arguments_and_files_are_named() {
        let (status, generator) = load(&generator_dir(false));
        assert_eq!((status, generator), (DistqStatus::InvalidModel, null_mut()));
        assert!(last_error().contains("tokenizer.json"), "{}", last_error());

        let dir = generator_dir(true);
        let (_, generator) = load(&dir);
        let defaults = distq_generate_options_default();
        // Safety: NULL prompt (reported), the rest valid.
        assert_eq!(unsafe { distq_generate(generator, null(), &defaults, None, null_mut(), null_mut()) }, DistqStatus::NullArgument);
        let zero_top_p = DistqGenerateOptions { top_p: 0.0, ..defaults };
        assert_eq!(generate(generator, c"w2", &zero_top_p, 9).0, DistqStatus::InvalidArgument);
        assert!(last_error().contains("top-p 0"), "{}", last_error());
        let chat = DistqGenerateOptions { chat: 1, ..defaults };
        assert_eq!(generate(generator, c"w2", &chat, 9).0, DistqStatus::InvalidModel);
        assert!(last_error().contains("no chat_template"), "{}", last_error());
        let short_context = DistqGenerateOptions { max_context: 3, ..defaults };
        assert_eq!(generate(generator, c"w2", &short_context, 99).0, DistqStatus::Input);
        assert!(last_error().contains("context"), "{}", last_error());
        distq_generator_free(generator);
        assert_eq!(generate(generator, c"w2", &defaults, 9).0, DistqStatus::InvalidArgument, "a freed generator");
        distq_generator_free(generator);
    }
}
