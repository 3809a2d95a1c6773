// tollgate-fake-upstream: runs the fake OpenAI/Anthropic upstream until SIGINT/SIGTERM, for
// benchmarks, the README demo and the SDK test (tests/sdk/run_sdk_test.sh).
#include <csignal>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <string_view>

#include "fake_upstream.hpp"

namespace {

constexpr std::string_view usage =
    "usage: tollgate-fake-upstream [--listen HOST:PORT] [--tls-cert FILE --tls-key FILE] [--quiet]\n"
    "  --listen    address to bind (default 127.0.0.1:9000; port 0 picks a free one)\n"
    "  --tls-cert  PEM certificate chain; with --tls-key serves https\n"
    "  --quiet     no line per request on stderr\n"
    "Behaviour is steered per request by x-fake-* headers: see tests/fake_upstream/README.md.\n";

[[noreturn]] void fail(const std::string& what) {
  std::cerr << "tollgate-fake-upstream: " << what << "\n" << usage;
  std::exit(2);
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot read " + path);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

}  // namespace

int main(int argc, char** argv) {
  fake::options opts;
  opts.port = 9000;
  opts.record_requests = false;  // a benchmark may send millions of requests
  opts.verbose = true;
  std::string cert_file, key_file;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) fail(std::string(arg) + " needs a value");
      return argv[++i];
    };
    if (arg == "--listen") {
      const std::string listen = value();
      const auto colon = listen.rfind(':');
      if (colon == std::string::npos) fail("--listen wants HOST:PORT, got " + listen);
      std::string host = listen.substr(0, colon);
      if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
      opts.host = host;
      try {
        const unsigned long port = std::stoul(listen.substr(colon + 1));
        if (port > 65535) throw std::out_of_range("port");
        opts.port = static_cast<uint16_t>(port);
      } catch (const std::exception&) {
        fail("bad port in --listen " + listen);
      }
    } else if (arg == "--tls-cert") {
      cert_file = value();
    } else if (arg == "--tls-key") {
      key_file = value();
    } else if (arg == "--quiet") {
      opts.verbose = false;
    } else if (arg == "--help" || arg == "-h") {
      std::cout << usage;
      return 0;
    } else {
      fail("unknown argument " + std::string(arg));
    }
  }
  if (cert_file.empty() != key_file.empty()) fail("--tls-cert and --tls-key go together");
  if (!cert_file.empty()) opts.tls = fake::tls_files{read_file(cert_file), read_file(key_file)};

  // Block the stop signals before any thread starts, so every thread inherits the mask and
  // sigwait below is the only place they arrive.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  std::signal(SIGPIPE, SIG_IGN);

  try {
    fake::server server(opts);
    std::printf("fake upstream listening on %s\n", server.base_url().c_str());
    std::fflush(stdout);
    int signal_number = 0;
    sigwait(&stop_signals, &signal_number);
    std::fprintf(stderr, "tollgate-fake-upstream: stopping on signal %d\n", signal_number);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tollgate-fake-upstream: %s\n", e.what());
    return 1;
  }
  return 0;
}
