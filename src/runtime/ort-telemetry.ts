// Imported for its side effect, before onnxruntime-node loads. ONNX Runtime 1.30 on Linux
// starts a telemetry client that reads /proc/self/cmdline and scans it with a recursive
// regular expression: a command line of ~28 KB or more (a long --prompt) overflows the
// native stack and the process dies with SIGSEGV. oneword sends no telemetry, so it is
// switched off here unless the user set the variable themselves.
process.env.ORT_DISABLE_TELEMETRY ??= '1';
