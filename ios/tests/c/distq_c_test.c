/* The C ABI as a C99 program uses it (built by ios/tests/c_program.rs with
 * gcc -std=c99 -Wall -Wextra -Werror -pedantic against ios/include/distq.h and libdistq.a).
 *
 *   distq_c_test misuse ADD_ONE.onnx   runs y = x + 1 and every misuse case; exit 0 if all hold
 *   distq_c_test run MODEL.onnx DIR [THREADS]
 *                                      runs MODEL on DIR/inputs.txt, writes DIR/outputs.txt;
 *                                      with THREADS, then runs the same inputs on the same
 *                                      session from THREADS threads at once, and every output
 *                                      must equal the first run's byte for byte
 *   distq_c_test generate MODEL.onnx PROMPT MAX_TOKENS STOP_AFTER
 *                                      greedy text after PROMPT, streamed to stdout piece by
 *                                      piece (each piece then a '|'); the callback stops the
 *                                      generation after STOP_AFTER pieces (0: never); then
 *                                      "tokens: P prompt, G generated, end E" on a line
 *
 * inputs.txt: one line per input, "name dtype rank d0 .. dn file" (file: raw little-endian
 * elements, relative to DIR). outputs.txt: the same format, files written beside it. */
/* pthreads are POSIX, beyond C99. */
#define _POSIX_C_SOURCE 200809L
#include "distq.h"

#include <pthread.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures = 0;
static int checks = 0;

#define CHECK(cond, ...)                                   \
  do {                                                     \
    checks++;                                              \
    if (!(cond)) {                                         \
      failures++;                                          \
      fprintf(stderr, "FAILED %s:%d: %s: ", __FILE__, __LINE__, #cond); \
      fprintf(stderr, __VA_ARGS__);                        \
      fprintf(stderr, " (last error: %s)\n", distq_last_error()); \
    }                                                      \
  } while (0)

/* The last error contains `part`. */
static int error_says(const char *part) { return strstr(distq_last_error(), part) != NULL; }

static DistqTensor f32_tensor(const char *name, const int64_t *shape, size_t rank, const float *data, size_t n) {
  DistqTensor t;
  t.name = name;
  t.dtype = DISTQ_DTYPE_FLOAT;
  t.shape = shape;
  t.rank = rank;
  t.data = data;
  t.byte_len = n * sizeof(float);
  return t;
}

static int misuse(const char *model_path) {
  DistqSession *session = NULL;
  DistqOutputs *outputs = NULL;
  DistqTensor view, input;
  DistqBenchmark bench;
  size_t n = 99;
  const char *name = NULL;
  const int64_t shape[1] = {3};
  const int64_t bad_shape[1] = {4};
  const int64_t negative[1] = {-3};
  const float x[3] = {1.0f, 2.0f, 3.0f};
  const float *y;
  const uint8_t garbage[8] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};

  CHECK(strlen(distq_version()) > 0, "version");

  /* Loading: a missing file, garbage bytes, NULL everything. */
  CHECK(distq_session_load("/nonexistent/model.onnx", &session) == DISTQ_STATUS_IO, "missing file");
  CHECK(session == NULL && error_says("/nonexistent/model.onnx"), "missing file leaves NULL and names the file");
  CHECK(distq_session_from_bytes(garbage, sizeof garbage, &session) == DISTQ_STATUS_INVALID_MODEL, "garbage bytes");
  CHECK(distq_session_load(NULL, &session) == DISTQ_STATUS_NULL_ARGUMENT, "NULL path");
  CHECK(distq_session_load(model_path, NULL) == DISTQ_STATUS_NULL_ARGUMENT, "NULL out");
  CHECK(distq_session_from_bytes(NULL, 10, &session) == DISTQ_STATUS_NULL_ARGUMENT, "NULL bytes");

  /* NULL handles everywhere a handle goes. */
  CHECK(distq_session_input_count(NULL, &n) == DISTQ_STATUS_NULL_ARGUMENT && n == 0, "NULL session count");
  CHECK(distq_session_input_name(NULL, 0, &name) == DISTQ_STATUS_NULL_ARGUMENT && name == NULL, "NULL session name");
  CHECK(distq_session_set_threads(NULL, 2) == DISTQ_STATUS_NULL_ARGUMENT, "NULL session threads");
  CHECK(distq_session_run(NULL, NULL, 0, &outputs) == DISTQ_STATUS_NULL_ARGUMENT && outputs == NULL, "NULL session run");
  CHECK(error_says("session is NULL"), "NULL session message");
  CHECK(distq_session_benchmark(NULL, NULL, 0, 1, 0, &bench) == DISTQ_STATUS_NULL_ARGUMENT, "NULL session bench");
  CHECK(distq_outputs_count(NULL, &n) == DISTQ_STATUS_NULL_ARGUMENT, "NULL outputs count");
  CHECK(distq_outputs_get(NULL, 0, &view) == DISTQ_STATUS_NULL_ARGUMENT, "NULL outputs get");
  CHECK(distq_outputs_find(NULL, "y", &view) == DISTQ_STATUS_NULL_ARGUMENT, "NULL outputs find");
  distq_session_free(NULL);
  distq_outputs_free(NULL);

  /* A real session. */
  CHECK(distq_session_load(model_path, &session) == DISTQ_STATUS_OK && session != NULL, "load %s", model_path);
  if (session == NULL) return 1;
  CHECK(distq_session_input_count(session, &n) == DISTQ_STATUS_OK && n == 1, "one input");
  CHECK(distq_session_input_name(session, 0, &name) == DISTQ_STATUS_OK && strcmp(name, "x") == 0, "input is x");
  CHECK(distq_session_output_name(session, 5, &name) == DISTQ_STATUS_INVALID_ARGUMENT && name == NULL, "index out of range");
  CHECK(distq_session_set_threads(session, 2) == DISTQ_STATUS_OK, "threads");

  input = f32_tensor("x", shape, 1, x, 3);
  CHECK(distq_session_run(session, &input, 1, &outputs) == DISTQ_STATUS_OK && outputs != NULL, "run");
  if (outputs != NULL) {
    CHECK(distq_outputs_count(outputs, &n) == DISTQ_STATUS_OK && n == 1, "one output");
    CHECK(distq_outputs_find(outputs, "y", &view) == DISTQ_STATUS_OK, "find y");
    CHECK(view.dtype == DISTQ_DTYPE_FLOAT && view.rank == 1 && view.shape[0] == 3 && view.byte_len == 12, "y's type and shape");
    y = (const float *)view.data;
    CHECK(y[0] == 2.0f && y[1] == 3.0f && y[2] == 4.0f, "y = x + 1: %g %g %g", y[0], y[1], y[2]);
    CHECK(distq_outputs_find(outputs, "nope", &view) == DISTQ_STATUS_INVALID_ARGUMENT && error_says("no output is called 'nope'"), "unknown output");
    CHECK(distq_outputs_get(outputs, 1, &view) == DISTQ_STATUS_INVALID_ARGUMENT, "output index out of range");
    distq_outputs_free(outputs);
    /* Freed handles are refused, not dereferenced; freeing twice is harmless. */
    CHECK(distq_outputs_count(outputs, &n) == DISTQ_STATUS_INVALID_ARGUMENT && error_says("freed already"), "freed outputs");
    distq_outputs_free(outputs);
    outputs = NULL;
  }

  /* Inputs that do not fit: sizes, names, dtypes, dims, NULL pointers. */
  input = f32_tensor("x", bad_shape, 1, x, 3);
  CHECK(distq_session_run(session, &input, 1, &outputs) == DISTQ_STATUS_INPUT && outputs == NULL, "too few bytes for the shape");
  CHECK(error_says("needs 16 bytes of raw data, got 12"), "size message");
  input = f32_tensor("x", shape, 1, x, 2);
  CHECK(distq_session_run(session, &input, 1, &outputs) == DISTQ_STATUS_INPUT, "byte_len short of the shape");
  input = f32_tensor("wrong", shape, 1, x, 3);
  CHECK(distq_session_run(session, &input, 1, &outputs) == DISTQ_STATUS_INPUT && error_says("input 'wrong': is not an input"), "wrong name");
  input = f32_tensor("x", shape, 1, x, 3);
  input.dtype = DISTQ_DTYPE_INT32;
  CHECK(distq_session_run(session, &input, 1, &outputs) == DISTQ_STATUS_INPUT && error_says("has dtype int32, the model declares float"), "wrong dtype");
  input.dtype = 42;
  CHECK(distq_session_run(session, &input, 1, &outputs) == DISTQ_STATUS_INVALID_ARGUMENT, "unknown dtype code");
  input = f32_tensor("x", negative, 1, x, 3);
  CHECK(distq_session_run(session, &input, 1, &outputs) == DISTQ_STATUS_INVALID_ARGUMENT && error_says("dim 0 is -3"), "negative dim");
  input = f32_tensor("x", NULL, 1, x, 3);
  CHECK(distq_session_run(session, &input, 1, &outputs) == DISTQ_STATUS_NULL_ARGUMENT, "NULL shape");
  input = f32_tensor("x", shape, 1, NULL, 3);
  CHECK(distq_session_run(session, &input, 1, &outputs) == DISTQ_STATUS_NULL_ARGUMENT, "NULL data");
  CHECK(distq_session_run(session, NULL, 1, &outputs) == DISTQ_STATUS_NULL_ARGUMENT, "NULL inputs array");
  CHECK(distq_session_run(session, NULL, 0, &outputs) == DISTQ_STATUS_INPUT && error_says("input 'x': is missing"), "no inputs");

  /* Benchmark. */
  input = f32_tensor("x", shape, 1, x, 3);
  CHECK(distq_session_benchmark(session, &input, 1, 0, 0, &bench) == DISTQ_STATUS_INVALID_ARGUMENT, "zero iters");
  CHECK(distq_session_benchmark(session, &input, 1, 10, 1, &bench) == DISTQ_STATUS_OK, "benchmark");
  CHECK(bench.iters == 10 && bench.p50_ms > 0.0 && bench.p50_ms <= bench.max_ms && bench.joules_per_inference > 0.0, "benchmark figures");

  distq_session_free(session);
  input = f32_tensor("x", shape, 1, x, 3);
  CHECK(distq_session_run(session, &input, 1, &outputs) == DISTQ_STATUS_INVALID_ARGUMENT && error_says("freed already"), "freed session");
  CHECK(distq_session_input_count(session, &n) == DISTQ_STATUS_INVALID_ARGUMENT, "freed session count");
  distq_session_free(session);
  printf("c misuse: %d checks, %d failed\n", checks, failures);
  return failures != 0;
}

/* Reads a whole file; NULL on failure. */
static void *read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  void *data;
  long size;
  if (f == NULL) return NULL;
  fseek(f, 0, SEEK_END);
  size = ftell(f);
  fseek(f, 0, SEEK_SET);
  data = malloc(size > 0 ? (size_t)size : 1);
  *len = data != NULL ? fread(data, 1, (size_t)size, f) : 0;
  fclose(f);
  return data;
}

#define MAX_INPUTS 16
#define MAX_RANK 8

/* What each thread of the concurrency check shares: one session, the inputs, and the
 * outputs of the single-threaded run to compare with. */
typedef struct {
  DistqSession *session;
  const DistqTensor *inputs;
  size_t count;
  DistqOutputs *expected;
  int mismatches;
} SharedRun;

#define RUNS_PER_THREAD 10
#define MAX_THREADS 64

static void *run_and_compare(void *arg) {
  SharedRun *shared = (SharedRun *)arg;
  size_t i, n = 0, want = 0;
  int k, mismatches = 0;
  for (k = 0; k < RUNS_PER_THREAD; k++) {
    DistqOutputs *outputs = NULL;
    if (distq_session_run(shared->session, shared->inputs, shared->count, &outputs) != DISTQ_STATUS_OK) {
      mismatches++;
      continue;
    }
    distq_outputs_count(outputs, &n);
    distq_outputs_count(shared->expected, &want);
    if (n != want) mismatches++;
    for (i = 0; i < n && i < want; i++) {
      DistqTensor got, ref;
      distq_outputs_get(outputs, i, &got);
      distq_outputs_get(shared->expected, i, &ref);
      if (got.byte_len != ref.byte_len || memcmp(got.data, ref.data, ref.byte_len) != 0) mismatches++;
    }
    distq_outputs_free(outputs);
  }
  shared->mismatches = mismatches;
  return NULL;
}

/* Runs `inputs` from `threads` threads at once on `session`; every output must equal
 * `expected` byte for byte. Returns the number of mismatched or failed runs. */
static int concurrent_runs(DistqSession *session, const DistqTensor *inputs, size_t count, DistqOutputs *expected, int threads) {
  pthread_t ids[MAX_THREADS];
  SharedRun shared[MAX_THREADS];
  int t, mismatches = 0;
  if (threads > MAX_THREADS) threads = MAX_THREADS;
  for (t = 0; t < threads; t++) {
    shared[t].session = session;
    shared[t].inputs = inputs;
    shared[t].count = count;
    shared[t].expected = expected;
    shared[t].mismatches = 0;
    if (pthread_create(&ids[t], NULL, run_and_compare, &shared[t]) != 0) return fprintf(stderr, "pthread_create failed\n"), 1;
  }
  for (t = 0; t < threads; t++) {
    pthread_join(ids[t], NULL);
    mismatches += shared[t].mismatches;
  }
  printf("c threads: %d threads x %d runs on one session, %d differing from the first run\n", threads, RUNS_PER_THREAD, mismatches);
  return mismatches;
}

static int run(const char *model_path, const char *dir, int threads) {
  char path[4096], file[256];
  char names[MAX_INPUTS][256];
  int64_t shapes[MAX_INPUTS][MAX_RANK];
  void *buffers[MAX_INPUTS];
  DistqTensor inputs[MAX_INPUTS];
  size_t count = 0, i, r, n = 0;
  int dtype;
  size_t rank;
  DistqSession *session = NULL;
  DistqOutputs *outputs = NULL;
  FILE *manifest, *out;
  int status = 0;

  snprintf(path, sizeof path, "%s/inputs.txt", dir);
  manifest = fopen(path, "r");
  if (manifest == NULL) return fprintf(stderr, "cannot open %s\n", path), 1;
  while (count < MAX_INPUTS && fscanf(manifest, "%255s %d %zu", names[count], &dtype, &rank) == 3 && rank <= MAX_RANK) {
    for (r = 0; r < rank; r++)
      if (fscanf(manifest, "%" SCNd64, &shapes[count][r]) != 1) return fprintf(stderr, "bad manifest\n"), 1;
    if (fscanf(manifest, "%255s", file) != 1) return fprintf(stderr, "bad manifest\n"), 1;
    snprintf(path, sizeof path, "%s/%s", dir, file);
    buffers[count] = read_file(path, &inputs[count].byte_len);
    if (buffers[count] == NULL) return fprintf(stderr, "cannot read %s\n", path), 1;
    inputs[count].name = names[count];
    inputs[count].dtype = dtype;
    inputs[count].shape = shapes[count];
    inputs[count].rank = rank;
    inputs[count].data = buffers[count];
    count++;
  }
  fclose(manifest);

  if (distq_session_load(model_path, &session) != DISTQ_STATUS_OK) return fprintf(stderr, "load: %s\n", distq_last_error()), 1;
  if (distq_session_run(session, inputs, count, &outputs) != DISTQ_STATUS_OK) {
    fprintf(stderr, "run: %s\n", distq_last_error());
    distq_session_free(session);
    return 1;
  }
  snprintf(path, sizeof path, "%s/outputs.txt", dir);
  manifest = fopen(path, "w");
  distq_outputs_count(outputs, &n);
  for (i = 0; i < n && manifest != NULL; i++) {
    DistqTensor view;
    distq_outputs_get(outputs, i, &view);
    fprintf(manifest, "%s %d %zu", view.name, view.dtype, view.rank);
    for (r = 0; r < view.rank; r++) fprintf(manifest, " %" PRId64, view.shape[r]);
    fprintf(manifest, " output%zu.bin\n", i);
    snprintf(path, sizeof path, "%s/output%zu.bin", dir, i);
    out = fopen(path, "wb");
    if (out == NULL || fwrite(view.data, 1, view.byte_len, out) != view.byte_len) status = 1;
    if (out != NULL) fclose(out);
  }
  if (manifest != NULL) fclose(manifest);
  if (threads > 0) {
    distq_session_set_threads(session, 2);
    if (concurrent_runs(session, inputs, count, outputs, threads) != 0) status = 1;
  }
  distq_outputs_free(outputs);
  distq_session_free(session);
  for (i = 0; i < count; i++) free(buffers[i]);
  printf("c run: %zu inputs, %zu outputs\n", count, n);
  return status;
}

/* Prints each piece and counts it; non-zero (stop) once `*(int *)user_data` pieces came. */
static int32_t print_piece(const char *text, size_t len, void *user_data) {
  int *left = (int *)user_data;
  fwrite(text, 1, len, stdout);
  fputs("|", stdout);
  fflush(stdout);
  return --*left == 0;
}

static int generate(const char *model_path, const char *prompt, int max_tokens, int stop_after) {
  DistqGenerator *generator = NULL;
  if (distq_generator_load(model_path, &generator) != DISTQ_STATUS_OK) {
    fprintf(stderr, "load: %s\n", distq_last_error());
    return 1;
  }
  DistqGenerateOptions options = distq_generate_options_default();
  options.max_tokens = (uint32_t)max_tokens;
  DistqGenerateStats stats;
  int left = stop_after;
  DistqStatus status = distq_generate(generator, prompt, &options, print_piece, &left, &stats);
  distq_generator_free(generator);
  if (status != DISTQ_STATUS_OK) {
    fprintf(stderr, "generate: %s\n", distq_last_error());
    return 1;
  }
  printf("\ntokens: %u prompt, %u generated, end %d\n", stats.prompt_tokens, stats.generated_tokens, (int)stats.end);
  return 0;
}

int main(int argc, char **argv) {
  if (argc == 3 && strcmp(argv[1], "misuse") == 0) return misuse(argv[2]);
  if (argc == 4 && strcmp(argv[1], "run") == 0) return run(argv[2], argv[3], 0);
  if (argc == 5 && strcmp(argv[1], "run") == 0) return run(argv[2], argv[3], atoi(argv[4]));
  if (argc == 6 && strcmp(argv[1], "generate") == 0) return generate(argv[2], argv[3], atoi(argv[4]), atoi(argv[5]));
  fprintf(stderr, "usage: %s misuse ADD_ONE.onnx | run MODEL.onnx DIR [THREADS] | generate MODEL.onnx PROMPT MAX_TOKENS STOP_AFTER\n", argv[0]);
  return 2;
}
