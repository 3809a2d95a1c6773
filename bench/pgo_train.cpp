// tollgate-pgo-train: the training run of the profile-guided build (.ci/build.sh, README "Design
// notes: a profile-guided build").
//
// It runs an instrumented tollgate (built with -fprofile-generate) against the in-process fake
// upstream and drives the calls production traffic is made of through it, over real loopback
// sockets, so that the profile GCC optimises with comes from the hot path as it runs:
//   phase 1, the shipped config/tollgate.yaml (auth off on loopback) and a plain-HTTP upstream,
//            as in bench/relay_bench.sh;
//   phase 2, client keys, budgets and rate limits (admission control) and a TLS upstream, as a
//            production deployment in front of https://api.holysheep.ai runs.
// Each phase is one tollgate process, stopped with SIGTERM: its counters are written when it
// exits normally. A call answered with an unexpected status fails the run, so a profile is never
// taken from a relay that was not working.
//
// usage: tollgate-pgo-train TOLLGATE_BINARY SOURCE_DIR [--calls N]
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include "fake_upstream.hpp"
#include "test_cert.hpp"

extern char** environ;

namespace {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;
using namespace std::chrono_literals;

// The tollgate being trained (-1: none). Every way out of a failed run kills it first, so a
// failed build leaves no stray process behind.
std::atomic<pid_t> running_child{-1};

void kill_child() noexcept {
  if (const pid_t pid = running_child.exchange(-1); pid > 0) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
  }
}

[[noreturn]] void die(const std::string& what) {
  kill_child();
  std::fprintf(stderr, "tollgate-pgo-train: %s\n", what.c_str());
  std::exit(1);
}

std::uint16_t free_port() {
  net::io_context ioc;
  tcp::acceptor a(ioc, tcp::endpoint(net::ip::make_address("127.0.0.1"), 0));
  return a.local_endpoint().port();
}

// One keep-alive client connection; a call that finds it closed reconnects once.
class client {
 public:
  explicit client(std::uint16_t port) : port_(port) {}

  // The response's status, or 0 if the call failed at the transport.
  unsigned call(const http::request<http::string_body>& req) {
    for (int attempt = 0; attempt < 2; ++attempt) {
      try {
        if (!sock_.is_open()) {
          sock_.connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), port_));
          buf_.clear();
        }
        http::write(sock_, req);
        http::response_parser<http::string_body> p;
        p.body_limit(boost::none);
        http::read(sock_, buf_, p);
        if (!p.get().keep_alive()) close();
        return p.get().result_int();
      } catch (const std::exception&) {
        close();  // a kept-alive connection the server closed: try once on a new one
      }
    }
    return 0;
  }

 private:
  void close() {
    beast::error_code ignored;
    sock_.close(ignored);
  }
  std::uint16_t port_;
  net::io_context ioc_;
  tcp::socket sock_{ioc_};
  beast::flat_buffer buf_;
};

struct call_kind {
  std::string name;
  http::request<http::string_body> req;
  unsigned expect;  // status
  int weight;       // share of the mix
};

http::request<http::string_body> make(http::verb verb, std::string target, std::string body,
                                      std::vector<std::pair<std::string, std::string>> headers) {
  http::request<http::string_body> r{verb, target, 11};
  r.set(http::field::host, "127.0.0.1");
  for (auto& [k, v] : headers) r.set(k, v);
  if (!body.empty()) {
    r.set(http::field::content_type, "application/json");
    r.body() = std::move(body);
  }
  r.prepare_payload();
  return r;
}

// What applications send: ~1 KB chat bodies, streams with usage, long streams, the Anthropic
// and Responses APIs, embeddings, the odd model list, upstream 429 and a malformed body.
std::vector<call_kind> the_mix(const std::string& key) {
  std::string filler;
  for (int i = 0; i < 18; ++i) filler += "The quick brown fox jumps over the lazy dog. ";
  const std::string messages =
      R"("messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":")" + filler + R"("}])";
  std::vector<std::pair<std::string, std::string>> openai, anthropic{{"anthropic-version", "2023-06-01"}};
  if (!key.empty()) {
    openai.emplace_back("Authorization", "Bearer " + key);
    anthropic.emplace_back("x-api-key", key);
  }
  auto with = [](auto h, std::string k, std::string v) {
    h.emplace_back(std::move(k), std::move(v));
    return h;
  };
  const auto post = http::verb::post;
  std::vector<call_kind> mix;
  mix.push_back({"chat", make(post, "/v1/chat/completions",
                              R"({"model":"gpt-4.1",)" + messages + R"(,"temperature":0.2,"max_tokens":256,"user":"train"})", openai),
                 200, 8});
  mix.push_back({"chat stream", make(post, "/v1/chat/completions",
                                     R"({"model":"gpt-4.1","stream":true,"stream_options":{"include_usage":true},)" + messages + R"(,"max_tokens":256})", openai),
                 200, 5});
  mix.push_back({"chat stream, 200 chunks", make(post, "/v1/chat/completions",
                                                 R"({"model":"gpt-4.1-mini","stream":true,)" + messages + "}",
                                                 with(openai, "x-fake-chunks", "200")),
                 200, 1});
  mix.push_back({"anthropic", make(post, "/v1/messages",
                                   R"({"model":"claude-sonnet-4.5","max_tokens":512,"messages":[{"role":"user","content":")" + filler + R"("}]})",
                                   with(anthropic, "x-fake-cached-tokens", "64")),
                 200, 1});
  mix.push_back({"anthropic stream", make(post, "/v1/messages",
                                          R"({"model":"claude-sonnet-4.5","max_tokens":512,"stream":true,"messages":[{"role":"user","content":")" + filler + R"("}]})",
                                          anthropic),
                 200, 1});
  mix.push_back({"responses stream", make(post, "/v1/responses",
                                          R"({"model":"gpt-4.1","stream":true,"input":")" + filler + R"("})", openai),
                 200, 1});
  mix.push_back({"embeddings", make(post, "/v1/embeddings",
                                    R"({"model":"text-embedding-3-small","input":")" + filler + R"("})", openai),
                 200, 1});
  mix.push_back({"models", make(http::verb::get, "/v1/models", "", openai), 200, 1});
  mix.push_back({"upstream 429", make(post, "/v1/chat/completions",
                                      R"({"model":"gpt-4.1",)" + messages + "}", with(openai, "x-fake-status", "429")),
                 429, 1});
  mix.push_back({"malformed body", make(post, "/v1/chat/completions", R"({"model":"gpt-4.1","messages":[)", openai), 400, 1});
  return mix;
}

pid_t spawn(const std::string& bin, const std::string& config,
            const std::vector<std::pair<std::string, std::string>>& env_over) {
  std::vector<std::string> env;
  for (char** e = environ; *e; ++e)
    if (std::string_view(*e).substr(0, 9) != "TOLLGATE_") env.emplace_back(*e);
  for (auto& [k, v] : env_over) env.push_back(k + "=" + v);
  std::vector<char*> envp;
  for (auto& s : env) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::string a0 = bin, a1 = "--config", a2 = config;
  char* argv[] = {a0.data(), a1.data(), a2.data(), nullptr};
  pid_t pid = -1;
  if (const int rc = ::posix_spawn(&pid, bin.c_str(), nullptr, nullptr, argv, envp.data()); rc != 0)
    die("cannot start " + bin + ": " + std::strerror(rc));
  running_child = pid;
  return pid;
}

// False when tollgate exited at start-up (its status in *status).
bool wait_healthy(pid_t pid, std::uint16_t port, int* status) {
  const auto until = std::chrono::steady_clock::now() + 30s;
  const auto probe = make(http::verb::get, "/healthz", "", {});
  while (std::chrono::steady_clock::now() < until) {
    if (::waitpid(pid, status, WNOHANG) == pid) {
      running_child = -1;
      return false;
    }
    if (client(port).call(probe) == 200) return true;
    std::this_thread::sleep_for(50ms);
  }
  die("tollgate did not become healthy within 30 s");
}

// Drives `calls` calls of the mix from `threads` keep-alive connections; /metrics is scraped
// now and then, as Prometheus does. Returns the number of unexpected answers.
std::size_t drive(std::uint16_t port, std::uint16_t admin_port, const std::vector<call_kind>& mix,
                  std::size_t calls, unsigned threads) {
  std::vector<std::size_t> schedule;  // kind indices, interleaved by weight
  for (std::size_t k = 0; k < mix.size(); ++k)
    for (int w = 0; w < mix[k].weight; ++w) schedule.push_back(k);
  for (std::size_t i = 0; i < schedule.size(); ++i)  // spread the kinds (a fixed shuffle)
    std::swap(schedule[i], schedule[(i * 7 + 3) % schedule.size()]);
  std::atomic<std::size_t> next{0}, bad{0};
  std::vector<std::thread> pool;
  for (unsigned t = 0; t < threads; ++t)
    pool.emplace_back([&] {
      client c(port), admin(admin_port);
      const auto scrape = make(http::verb::get, "/metrics", "", {});
      for (std::size_t i; (i = next.fetch_add(1)) < calls;) {
        const call_kind& k = mix[schedule[i % schedule.size()]];
        if (const unsigned got = c.call(k.req); got != k.expect) {
          if (bad.fetch_add(1) < 5)
            std::fprintf(stderr, "tollgate-pgo-train: %s answered %u, expected %u\n", k.name.c_str(), got, k.expect);
        }
        if (i % 1000 == 0 && admin.call(scrape) != 200) bad.fetch_add(1);
      }
    });
  for (auto& th : pool) th.join();
  return bad.load();
}

void stop(pid_t pid) {
  ::kill(pid, SIGTERM);
  int status = 0;
  const auto until = std::chrono::steady_clock::now() + 60s;
  while (::waitpid(pid, &status, WNOHANG) != pid) {
    if (std::chrono::steady_clock::now() > until) die("tollgate did not stop within 60 s of SIGTERM");
    std::this_thread::sleep_for(20ms);
  }
  running_child = -1;
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    die("tollgate did not exit cleanly (status " + std::to_string(status) + "): no profile written");
}

void phase(const char* name, const std::string& bin, const std::string& config,
           std::vector<std::pair<std::string, std::string>> env, const std::string& key, std::size_t calls) {
  env.emplace_back("TOLLGATE_LOG_LEVEL", "warn");
  env.emplace_back("TOLLGATE_WORKERS", "1");
  const auto t0 = std::chrono::steady_clock::now();
  // The ports are free when picked, but another process (tests run in parallel) can take one
  // before tollgate binds it: a start-up failure is retried on fresh ports, twice.
  std::uint16_t port = 0, admin_port = 0;
  pid_t pid = -1;
  for (int attempt = 1;; ++attempt) {
    port = free_port();
    admin_port = free_port();
    auto run_env = env;
    run_env.emplace_back("TOLLGATE_LISTEN", "127.0.0.1:" + std::to_string(port));
    run_env.emplace_back("TOLLGATE_ADMIN_LISTEN", "127.0.0.1:" + std::to_string(admin_port));
    pid = spawn(bin, config, run_env);
    int status = 0;
    if (wait_healthy(pid, port, &status)) break;
    if (attempt == 3) die("tollgate exited at start-up (status " + std::to_string(status) + ")");
  }
  const std::size_t bad = drive(port, admin_port, the_mix(key), calls, 4);
  stop(pid);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("tollgate-pgo-train: %s: %zu calls in %.1f s, %zu unexpected\n", name, calls, s, bad);
  if (bad > 0) die(std::string(name) + ": unexpected answers; no profile should be taken from this run");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) die("usage: tollgate-pgo-train TOLLGATE_BINARY SOURCE_DIR [--calls N]");
  const std::string bin = argv[1];
  const std::filesystem::path src = argv[2];
  std::size_t calls = 24000;
  for (int i = 3; i < argc; ++i) {
    if (std::string_view(argv[i]) == "--calls" && i + 1 < argc) calls = std::stoul(argv[++i]);
    else die(std::string("unknown argument ") + argv[i]);
  }
  std::signal(SIGPIPE, SIG_IGN);
  // A watchdog, so a hung relay fails the build instead of stalling it.
  std::thread([] {
    std::this_thread::sleep_for(600s);
    std::fprintf(stderr, "tollgate-pgo-train: still running after 600 s, giving up\n");
    kill_child();
    std::_Exit(1);
  }).detach();

  char tmpl[] = "/tmp/tollgate-pgo-XXXXXX";
  if (!::mkdtemp(tmpl)) die("cannot make a temporary directory");
  const std::filesystem::path work = tmpl;
  try {
    fake::options plain_opts;
    plain_opts.record_requests = false;
    fake::server plain(plain_opts);
    phase("shipped config, plain upstream", bin, (src / "config/tollgate.yaml").string(),
          {{"TOLLGATE_UPSTREAM_URL", plain.base_url()},
           {"TOLLGATE_UPSTREAM_API_KEY", "sk-upstream-train"},
           {"TOLLGATE_LEDGER_PATH", (work / "plain.db").string()}},
          "", calls * 2 / 3);

    const auto certs = fake::make_test_certs(fake::cert_kind::good);
    fake::options tls_opts;
    tls_opts.record_requests = false;
    tls_opts.tls = fake::tls_files{certs.cert_pem, certs.key_pem};
    fake::server tls(tls_opts);
    fake::write_file((work / "ca.pem").string(), certs.ca_pem);
    const std::string config = (work / "tollgate.yaml").string();
    fake::write_file(config,
                     "auth: optional\n"
                     "keys:\n"
                     "  - name: train-app\n"
                     "    key: sk-train-app\n"
                     "    team: web\n"
                     "    budgets:\n"
                     "      - { period: day, limit_usd: 1000000, hard: true }\n"
                     "    limits: { rpm: 100000000, tpm: 100000000000 }\n"
                     "budgets:\n"
                     "  - { scope: global, period: month, limit_usd: 10000000, soft: [0.5, 0.8, 1.0], hard: false }\n"
                     "  - { scope: \"team:web\", period: day, limit_usd: 1000000, hard: true }\n"
                     "upstream:\n"
                     "  name: train\n"
                     "  url: " + tls.base_url() + "\n"
                     "  api_key: sk-upstream-train\n"
                     "  ca_file: " + (work / "ca.pem").string() + "\n"
                     "ledger:\n"
                     "  path: " + (work / "tls.db").string() + "\n"
                     "pricing:\n"
                     "  file: " + (src / "config/prices.yaml").string() + "\n");
    phase("keys and budgets, TLS upstream", bin, config, {}, "sk-train-app", calls - calls * 2 / 3);
  } catch (const std::exception& e) {
    std::filesystem::remove_all(work);
    die(e.what());
  }
  std::filesystem::remove_all(work);
  return 0;
}
