# Sourced by the benchmark scripts (relay_bench.sh, ab_bench.sh): their temporary directory, the
# processes they start, and the canned upstream reply. Not run on its own.

# $work: a temporary directory, removed on exit with every process in $pids killed first.
work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The canned upstream's chat completion (non-stream), with usage as OpenAI sends it.
chat='{"id":"chatcmpl-bench","object":"chat.completion","created":1764460800,"model":"gpt-4.1-2025-04-14","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! This is a canned benchmark reply."},"finish_reason":"stop"}],"usage":{"prompt_tokens":231,"completion_tokens":9,"total_tokens":240,"prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}}}'
