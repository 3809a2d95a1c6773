// One client connection: reads requests (keep-alive, pipelining), validates them, forwards
// /v1 calls to the upstream through the worker's pool, relays the response chunk by chunk while
// metering usage, and hands one usage_record per call to the ledger. Started by the worker's
// acceptor (server.cpp). Every step has a deadline; nothing here blocks the worker thread.
#include <sys/socket.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/buffers_suffix.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <boost/optional.hpp>

#include <algorithm>
#include <array>
#include <charconv>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <ctime>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <set>

#include "core/audio_length.hpp"
#include "core/inflate.hpp"
#include "core/log.hpp"
#include "core/policy.hpp"
#include "core/request_id.hpp"
#include "core/request_inspect.hpp"
#include "core/sse_parser.hpp"
#include "core/usage.hpp"
#include "core/utf8.hpp"
#include "core/ws_frames.hpp"
#include "ledger/journal.hpp"
#include "ledger/ledger.hpp"
#include "net/metrics.hpp"
#include "net/drained_read.hpp"
#include "net/spool_body.hpp"
#include "net/worker.hpp"

namespace tollgate {

// Audio tokens gpt-4o-mini-tts bills per second of speech, for a reply that reports none: one
// per 50 ms, as OpenAI's audio models count output audio ($12 per 1M tokens = $0.0144 a minute;
// OpenAI quotes ~$0.015; a 268 s reply of a measured call billed ~19.6 a second).
constexpr double kSpeechAudioTokensPerSecond = 20.0;

namespace http = beast::http;
namespace ssl = asio::ssl;
using asio::awaitable;
using asio::redirect_error;
using asio::use_awaitable;
using namespace std::literals;

namespace {

constexpr auto local_write_timeout = 30s;
// A pass-through JSON body is read for its model (admit) up to this size: an image request is
// small; a larger body would cost the I/O thread more than its ledger row is worth.
constexpr std::size_t pass_through_inspect_limit = 1 << 20;
constexpr std::string_view upload_too_large =
    "Request body exceeds the configured limit for uploads (server.max_upload_bytes).";
// A stored upload goes upstream in writes of this size (see send_spooled).
constexpr std::size_t spool_chunk = 256 * 1024;
// How long a keep-alive connection waits for its next request with a read buffer ready (one recv
// per request) before it gives the buffer back and parks on a 1-byte read (see park()).
constexpr auto hot_idle = 50ms;

// Allocator of the header containers (basic_fields) of the client's request and the upstream's
// response: a dozen small nodes per call, each a malloc and a free that missed glibc's 7-entry
// per-size cache with 16 calls in flight (2-3 % of a call's instructions with the arena lock).
// Freed nodes wait on per-thread free lists by size class (64..1024 bytes, at most 1024 each,
// so at most ~2 MiB per thread); larger ones go to operator new. A node may be freed on
// another thread than its own: it then joins that thread's lists, which is just as good.
class field_pool {
 public:
  static void* allocate(std::size_t bytes) {
    const int c = size_class(bytes);
    if (c < 0) return ::operator new(bytes);
    auto& self = local();
    if (node* n = self.head_[c]) {
      self.head_[c] = n->next;
      --self.count_[c];
      return n;
    }
    return ::operator new(std::size_t{64} << c);
  }
  static void deallocate(void* p, std::size_t bytes) noexcept {
    const int c = size_class(bytes);
    if (c < 0) return ::operator delete(p);
    auto& self = local();
    if (self.count_[c] >= kMaxPerClass) return ::operator delete(p);
    auto* n = static_cast<node*>(p);
    n->next = self.head_[c];
    self.head_[c] = n;
    ++self.count_[c];
  }

 private:
  static constexpr int kClasses = 5;  // 64, 128, 256, 512, 1024 bytes
  static constexpr std::size_t kMaxPerClass = 1024;
  struct node {
    node* next;
  };
  static int size_class(std::size_t bytes) noexcept {
    for (int c = 0; c < kClasses; ++c)
      if (bytes <= (std::size_t{64} << c)) return c;
    return -1;
  }
  static field_pool& local() noexcept {
    thread_local field_pool pool;
    return pool;
  }
  ~field_pool() {
    for (node* h : head_)
      while (h) {
        node* next = h->next;
        ::operator delete(h);
        h = next;
      }
  }
  std::array<node*, kClasses> head_{};
  std::array<std::size_t, kClasses> count_{};
};

template <class T>
struct field_allocator {
  using value_type = T;
  using is_always_equal = std::true_type;
  field_allocator() noexcept = default;
  template <class U>
  field_allocator(const field_allocator<U>&) noexcept {}
  T* allocate(std::size_t n) { return static_cast<T*>(field_pool::allocate(n * sizeof(T))); }
  void deallocate(T* p, std::size_t n) noexcept { field_pool::deallocate(p, n * sizeof(T)); }
  template <class U>
  bool operator==(const field_allocator<U>&) const noexcept { return true; }
};

// A call's id when the client sends none (core/request_id.hpp: its start, then 48 random bits).
std::string new_request_id(std::int64_t start_ms) {
  thread_local std::mt19937_64 rng{std::random_device{}() ^
                                   static_cast<std::uint64_t>(steady::now().time_since_epoch().count())};
  return make_request_id(start_ms, rng());
}

std::int64_t unix_ms_now() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

double ms_between(steady::time_point a, steady::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

bool is_eof_like(const beast::error_code& ec) {
  return ec == http::error::end_of_stream || ec == asio::error::eof || ec == asio::error::connection_reset ||
         ec == asio::error::broken_pipe || ec == http::error::partial_message ||
         ec == ssl::error::stream_truncated;
}

// Which upstream failure an error code means, given the stage it happened in.
errc classify_upstream_error(const beast::error_code& ec, errc timeout_kind, steady::time_point total_deadline) {
  if (ec == beast::error::timeout)
    return steady::now() + 5ms >= total_deadline ? errc::upstream_total_timeout : timeout_kind;
  if (is_eof_like(ec)) return errc::upstream_reset;
  if (ec.category() == asio::error::get_ssl_category() || ec.category() == ssl::error::get_stream_category())
    return errc::upstream_tls;
  if (ec.category() == beast::error_code(http::error::bad_version).category())
    return errc::upstream_protocol;
  return errc::upstream_reset;
}

// Which failure a response head that could not be read means: a timeout or reset as
// classify_upstream_error() says, else bytes that arrived but were not HTTP.
errc upstream_head_error(const beast::error_code& ec, steady::time_point total_deadline) {
  const errc e = classify_upstream_error(ec, errc::upstream_first_byte_timeout, total_deadline);
  if (ec != beast::error::timeout && !is_eof_like(ec) && e != errc::upstream_tls) return errc::upstream_protocol;
  return e;
}

// The first line of the buffered request is "method SP target SP HTTP/<digit>.<digit>".
template <class Buffer>
bool request_line_has_http_version(const Buffer& b) {
  std::string_view data(static_cast<const char*>(b.data().data()), b.size());
  auto eol = data.find("\r\n");
  std::string_view line = data.substr(0, eol == std::string_view::npos ? data.size() : eol);
  auto sp = line.rfind(' ');
  if (sp == std::string_view::npos || std::count(line.begin(), line.end(), ' ') != 2) return false;
  std::string_view v = line.substr(sp + 1);
  auto digit = [](char c) { return c >= '0' && c <= '9'; };
  return v.size() == 8 && v.starts_with("HTTP/") && digit(v[5]) && v[6] == '.' && digit(v[7]);
}

// Over the head limit before the request line was parsed (Beast parses it only once the whole
// head is in, so the buffer still starts with it) and no line end in the buffer: the request
// line alone is too long, a 414 (RFC 9110 §15.5.15) rather than the 431 of too many header bytes.
template <class Buffer>
bool request_line_unterminated(const Buffer& b) {
  std::string_view data(static_cast<const char*>(b.data().data()), b.size());
  return data.find('\n') == std::string_view::npos;
}

// Allocator for the client read buffer: its usual block (8 KiB) comes from the worker's cache,
// so releasing the buffer whenever the connection goes idle costs no malloc/free churn. Other
// sizes (a request head or body past 8 KiB) go to operator new.
struct read_block_allocator {
  using value_type = char;
  template <class U>
  struct rebind {
    static_assert(std::is_same_v<U, char>, "the read buffer allocates bytes only");
    using other = read_block_allocator;
  };
  block_cache* cache;
  explicit read_block_allocator(block_cache& c) noexcept : cache(&c) {}
  char* allocate(std::size_t n) { return n == cache->block() ? cache->take() : static_cast<char*>(::operator new(n)); }
  void deallocate(char* p, std::size_t n) noexcept {
    if (n == cache->block())
      cache->give(p);
    else
      ::operator delete(p);
  }
  bool operator==(const read_block_allocator& o) const noexcept { return cache == o.cache; }
};
using read_buffer = beast::basic_flat_buffer<read_block_allocator>;

// For one walk over a parsed header that picks out the fields tollgate reads: `slot` takes the
// value unless an earlier field of that name did (the first of duplicates, as operator[]); a
// slot never set keeps a null data(), so "absent" and "empty" stay apart.
void keep_first(std::string_view& slot, beast::string_view value) noexcept {
  if (slot.data() == nullptr) slot = std::string_view(value.data(), value.size());
}

// One send of as much of `bufs` as the socket takes now. The socket is in non-blocking mode, so
// this never waits: it returns the bytes sent, 0 when the socket would block or failed (the async
// write of the rest that follows then waits, or reports the failure). A response or request of a
// few KB almost always goes whole, and skips an async write: its timer, its handler and a trip
// through the scheduler (~4k instructions).
template <class Buffers>
std::size_t send_now(tcp::socket& s, const Buffers& bufs) {
  beast::error_code ec;
  const std::size_t n = s.write_some(bufs, ec);
  return ec ? 0 : n;
}

// A relay buffer borrowed from the worker for one exchange.
class relay_lease {
 public:
  explicit relay_lease(block_cache& c) : cache_(c), buf_(c.take()) {}
  relay_lease(const relay_lease&) = delete;
  relay_lease& operator=(const relay_lease&) = delete;
  ~relay_lease() { cache_.give(buf_); }
  char* data() const noexcept { return buf_; }
  std::size_t size() const noexcept { return cache_.block(); }

 private:
  block_cache& cache_;
  char* buf_;
};

}  // namespace

// The client's request, its header in field_pool nodes.
using client_request = http::request<http::string_body, http::basic_fields<field_allocator<char>>>;
using client_parser = http::request_parser<http::string_body, field_allocator<char>>;
// An upstream response head, and its body relayed through a caller's buffer.
using upstream_parser = http::response_parser<http::buffer_body, field_allocator<char>>;

namespace {

// Every Transfer-Encoding field of the request lists only `chunked`.
bool only_chunked_transfer(const client_request& req) noexcept {
  auto [first, last] = req.equal_range(http::field::transfer_encoding);
  for (auto it = first; it != last; ++it)
    if (!only_chunked_coding(std::string_view(it->value().data(), it->value().size()))) return false;
  return true;
}

// The Date header's value, formatted once a second per thread.
std::string_view date_now() noexcept {
  thread_local char text[29];
  thread_local std::int64_t at = -1;
  const std::int64_t now = static_cast<std::int64_t>(std::time(nullptr));
  if (now != at) {
    http_date(now, text);
    at = now;
  }
  return {text, sizeof text};
}

// Trailer fields of a chunked request body: Beast's parser inserts them among the fields (after
// the last one of the same name). RFC 9110 §6.5.1: they are not merged into the header section;
// every field that is not one of the head's (`head_fields`, their addresses: a field is a node
// that stays put) is dropped, so trailers neither reach the upstream nor pass for headers checked
// with the head (Host, Authorization, x-fake-status...).
void drop_trailers(client_request& req, const std::vector<const void*>& head_fields) {
  for (auto it = req.begin(); it != req.end();) {
    if (std::find(head_fields.begin(), head_fields.end(), static_cast<const void*>(&*it)) == head_fields.end())
      it = req.erase(it);
    else
      ++it;
  }
}

}  // namespace

class client_session : public std::enable_shared_from_this<client_session> {
 public:
  client_session(worker& w, tcp::socket s)
      : w_(w), st_(w.state), cfg_(w.state.cfg), stream_(std::move(s)), buffer_(read_block_allocator(w.read_blocks)), read_timer_(w.ioc) {
    beast::error_code ec;
    stream_.socket().non_blocking(true, ec);  // for send_now(); async operations are unaffected
    st_.client_connections.fetch_add(1, std::memory_order_relaxed);
  }
  client_session(const client_session&) = delete;
  client_session& operator=(const client_session&) = delete;
  ~client_session() {
    stop_watch();  // a call's frame destroyed mid-call (shutdown)
    st_.client_connections.fetch_sub(1, std::memory_order_relaxed);
  }

  // A new connection parks until its first byte, under the header timeout (slowloris).
  void begin() {
    beast::error_code ec;
    if (park(cfg_.header_timeout, ec)) return;
    if (ec)
      close_socket();
    else
      spawn(shared_from_this());
  }
  // At the start of a drain: an idle connection closes; a WebSocket tunnel closes as soon as no
  // response is in flight (now, or when the one in flight ends), with a close frame 1001 to the
  // client (the SDKs reconnect), instead of holding the drain to its deadline and then vanishing.
  void close_if_idle() {
    if (idle_) {
      close_socket();
    } else if (tunnel_ != nullptr) {
      tunnel_->going_away = true;
      beast::error_code ignored;  // ends the upstream read; the relay then says goodbye
      if (tunnel_->quiet()) {
        tunnel_->shut = true;
        tunnel_->conn->tcp().socket().shutdown(tcp::socket::shutdown_both, ignored);
      }
    }
  }
  void abort() {
    aborting_ = true;
    if (watch_conn_) watch_conn_->close();
    close_socket();
  }

 private:
  // Per-call state, reset for every request.
  struct call {
    usage_record rec;
    request_facts facts;
    bool strip = false;           // tollgate added include_usage; drop the usage-only chunk
    steady::time_point t0;        // request head received
    // t_up_start: the first attempt's start; failed attempts and failover are upstream time, not
    // tollgate's overhead (tollgate_overhead_seconds).
    steady::time_point t_up_start, t_up_end;
    bool head_sent = false;
    errc error = errc::ok;
    int client_version = 11;
    bool head_request = false;
    int failover_status = 0;      // the upstream answered 429/5xx and another upstream will be tried
    double price_multiplier = 1;  // of the upstream that served the call
    reported_cost_use reported_cost = reported_cost_use::fallback;  // ... and what its usage's cost does
    bool stated_reserve = false;  // a hard budget reserved at stated_rates (an unpriced model whose relay states costs)
    double header_cost_usd = -1;  // a LiteLLM proxy's x-litellm-response-cost (non-stream replies; -1: none)
    std::uint64_t ticket = 0;     // policy reservation, settled in finish_call
    std::string sent_model;       // the model a routing rule rewrote the body to ("": as asked)
    // The request header fields tollgate reads, found in one walk of the parsed header (each
    // operator[] was a case-insensitive tree search); the first of duplicates, as operator[].
    struct head_fields {
      std::size_t hosts = 0;
      bool transfer_encoding = false;
      // Each the first field of its name; a null data() when absent (an empty value is present).
      std::string_view expect, request_id, api_key, authorization, content_type, content_encoding;
      std::string_view connection, upgrade;
      std::string_view anthropic_version;  // an Anthropic SDK sends it on every call
      std::string_view host;
      std::string_view end_user;  // the configured user_header's value
    } head;
    bool body_decoded = false;  // a gzip/deflate request body was decoded in place (admit)
    bool websocket = false;     // a WebSocket opening handshake on a pass-through path (tunnel)
    bool ws_sideband = false;   // ... of a sideband on a Live session metered here: relayed unmetered
    bool meter = true;          // a 2xx answer's usage is new spend (usage_is_new_spend)
    std::string background_id;  // reads or cancels a pending background response: metered once
    std::string batch_id;       // reads or cancels a batch created through tollgate: metered once
    std::string message_batch_id;  // downloads the results of a message batch created here
    // The start of the call that created the object this call meters (a background response, a
    // batch: pending_responses), Unix ms: its usage is priced at the prices of then; -1: this one's.
    std::int64_t created_ms = -1;
    // Usage of a call that bills several models, per model, each priced at its own: a message
    // batch's results (at batch prices), a Realtime session (its model, its transcription model).
    std::vector<std::pair<std::string, token_usage>> usage_by_model;
    media_call media = media_call::none;  // an image or video generation (billed per image / second)
    bool creates_batch = false; // POST /v1/batches or /v1/messages/batches: its id is remembered
    bool batch_objects = false; // Anthropic message batches: results_url made relative
    // What a speech, image or video request asks for (billed per character, per second of audio,
    // per image, per second of video). Allocated only for those calls: the call lives in the
    // coroutine frame of every idle connection, so what most calls never use stays out of it.
    struct media_facts {
      speech_facts speech;      // POST /v1/audio/speech: its input's characters and text tokens
      media_request media_req;  // an image's or video's size, quality and length as asked
    };
    std::unique_ptr<media_facts> media_in;
    media_facts& media_of() {
      if (!media_in) media_in = std::make_unique<media_facts>();
      return *media_in;
    }
    spool_body::value_type spooled;  // a large pass-through body, in a file (spool_request_body)
    // Bytes of `spooled` sent replaced (a routing rewrite of a stored form's model): `length`
    // bytes at `offset` go as `text`.
    struct splice {
      std::uint64_t offset = 0, length = 0;
      std::string text;
    };
    std::unique_ptr<splice> spool_edit;
    std::uint64_t spooled_size_sent() const {
      return spool_edit ? spooled.size() - spool_edit->length + spool_edit->text.size() : spooled.size();
    }
  };

  static void mark_upstream_start(call& c) {
    if (c.t_up_start == steady::time_point{}) c.t_up_start = steady::now();
  }
  awaitable<bool> handle_one();
  void take_head(const client_request& req, call::head_fields& h);
  bool open_spool(call& c, bool fits_in_memory) const;
  form_facts stored_form(const call& c) const;
  awaitable<errc> spool_request_body(client_parser& parser, call& c);
  std::pair<errc, std::string> decode_request_body(client_request& req, call& c) const;
  static std::int64_t prompt_estimate(call& c, const client_request& req);
  awaitable<bool> proxy(client_request& req, const route_decision& rd, const target_parts& tp,
                        call& c);
  // What admit() decided: a refusal (errc::ok: admitted) with its message, and the upstreams to
  // try, in order (probe: a half-open breaker's trial call).
  struct candidate {
    upstream_node* t;
    bool probe;
  };
  struct admission {
    errc refusal = errc::ok;
    std::string message;
    std::vector<candidate> tries;
    void refuse(errc e, std::string_view msg) {
      refusal = e;
      message = msg;
    }
  };
  void admit(client_request& req, const route_decision& rd, const target_parts& tp, call& c, admission& a);
  // How a response body is framed for the client; see shape_response().
  enum class framing { none, length, chunked, close };
  struct response_shape {
    bool sse = false, compressed = false, decodable = false, edit_events = false;
    framing mode = framing::none;
  };
  response_shape shape_response(const upstream_parser& p, call& c, bool& keep_client);
  void write_upstream_head(const upstream_node& t, const client_request& req, const call& c,
                           const route_decision& rd, std::string_view path, std::string_view query);
  awaitable<std::unique_ptr<upstream_conn>> connect_upstream(upstream_pool& pool, errc& err);
  enum class exchange_result { done, retry, failover };
  awaitable<exchange_result> attempt(upstream_pool& pool, client_request& req, call& c,
                                     bool& keep_client, bool may_fail_over);
  template <class Stream>
  awaitable<exchange_result> exchange(Stream& up, upstream_conn& conn, const upstream_config& uc, bool reused,
                                      client_request& req, call& c, bool& keep_client,
                                      bool& keep_upstream, bool may_fail_over);
  awaitable<void> tunnel(const std::vector<candidate>& tries, client_request& req, const route_decision& rd,
                         const target_parts& tp, call& c);
  template <class Stream>
  awaitable<void> send_spooled(Stream& up, upstream_conn& conn, const upstream_config& uc, const call& c,
                               steady::time_point total_deadline, beast::error_code& ec);
  template <class Stream>
  awaitable<void> tunnel_on(Stream& up, upstream_conn& conn, const upstream_config& uc, call& c);
  awaitable<bool> send_local(int status, std::string body, bool keep, std::string_view allow = {},
                             std::string_view request_id = {}, std::string_view content_type = "application/json");
  awaitable<bool> send_error(errc e, std::string_view message, bool keep, std::string_view request_id = {},
                             std::string_view allow = {}) {
    if (const auto advice = should_retry(e); !advice.empty()) extra_headers_.emplace_back("x-should-retry", advice);
    // The Anthropic SDKs read an error's id from `request-id` (APIError.requestID), as Anthropic sends it.
    if (anthropic_errors_ && !request_id.empty()) extra_headers_.emplace_back("request-id", request_id);
    return send_local(http_status(e),
                      anthropic_errors_ ? anthropic_error_body(e, message, request_id) : error_body(e, message, error_type_),
                      keep, allow, request_id);
  }
  awaitable<void> linger_close();
  awaitable<std::size_t> read_now_or_wait(asio::mutable_buffer b, steady::time_point until, beast::error_code& ec);
  void finish_call(call& c);
  void add_other_models(call& c, const std::vector<std::pair<std::string, token_usage>>& others);
  stated_rates::rates stated_reserve_rates(std::string_view model) const;
  bool reserve_stated(const route_plan& plan, route_kind route, bool stream, std::string_view model,
                      const token_usage& worst, double& reserve_usd) const;
  static void add_session_usage(const realtime_meter& meter, usage_record& rec,
                                std::vector<std::pair<std::string, token_usage>>& by_model);
  bool is_live_sideband_of_metered(std::string_view path) const;
  void arm_read_deadline(steady::duration d);
  void disarm_read_deadline();
  void start_watch();
  void stop_watch();
  static void arm_sweep(worker& w);
  awaitable<void> run();
  bool park(steady::duration wait, beast::error_code& ec);
  void take_first_byte();
  static void spawn(const std::shared_ptr<client_session>& s);
  void close_socket() {
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ec);
    stream_.socket().close(ec);
  }
  bool client_gone() const { return watch_index_ != not_watched && gone_; }

  worker& w_;
  shared_state& st_;
  const config& cfg_;
  beast::tcp_stream stream_;
  read_buffer buffer_;  // request bytes; released while the connection is idle
  // Deadline of a request head or body read (arm_read_deadline): it cancels the read rather than
  // close the socket as beast::tcp_stream's own timeout does, so the client still gets its 408.
  asio::steady_timer read_timer_;
  std::uint64_t read_gen_ = 0;
  bool read_timed_out_ = false;
  char first_byte_ = 0;        // the idle read's one-byte buffer
  std::string out_;      // bytes to send to the client for one relay step
  std::string head_;     // serialized response head
  std::string parse_;    // (decoded) copy of a non-stream body, for usage
  std::string up_head_;  // the request head sent upstream (one attempt)
  std::vector<header_view> up_headers_;  // the client's headers (views into the parsed request), from handle_one
  // Client abort detection (start_watch): this session's place in w_.watched, whether the
  // sweep found the client gone, and the upstream connection to cancel when it does.
  static constexpr std::size_t not_watched = static_cast<std::size_t>(-1);
  std::size_t watch_index_ = not_watched;
  bool gone_ = false;
  upstream_conn* watch_conn_ = nullptr;
  // Headers tollgate adds to this call's response, relayed or local (x-ratelimit-*, Retry-After).
  std::vector<std::pair<std::string, std::string>> extra_headers_;
  // A WebSocket tunnel's state a drain reads (close_if_idle), set while tunnel_on relays.
  struct tunnel_ctl {
    const ws_message_reader* reader;
    const realtime_meter* meter;
    upstream_conn* conn;
    bool going_away = false;
    bool shut = false;  // the drain shut the upstream's socket (not the upstream itself)
    // Between the upstream's messages, with no response in flight.
    bool quiet() const noexcept { return reader->between_messages() && meter->in_flight() == 0; }
  };
  tunnel_ctl* tunnel_ = nullptr;
  bool idle_ = true;
  bool aborting_ = false;
  bool anthropic_errors_ = false;  // this call is on the Messages API: errors in Anthropic's shape
  bool head_request_ = false;      // this call is a HEAD: local answers send their head only
  std::string_view error_type_;    // an OpenAI error `type` other than the code's ("tokens"); a literal
  unsigned client_version_ = 11;   // this call's HTTP version (10 or 11): local answers speak it
  std::size_t skipped_blank_ = 0;  // CR/LF bytes skipped before this request's line
  // The price table of this call (of the last one while idle, of the handshake for a tunnel):
  // taken at its start, so a reload mid-call changes neither its reservation nor its cost.
  std::shared_ptr<const price_table> prices_;
  const price_table& prices() const noexcept { return *prices_; }
};

// ---------------------------------------------------------------------------------------------
// Connection loop

awaitable<void> client_session::run() {
  // Entered with the first byte of a request in buffer_ (park()).
  auto self = shared_from_this();
  beast::error_code ec;
  bool linger = false;
  for (;;) {
    idle_ = true;
    if (st_.draining.load(std::memory_order_relaxed) || aborting_) break;
    if (buffer_.size() == 0) {
      // Waiting for the next request: the keep-alive timeout applies until its first byte.
      // Hot: a keep-alive client usually sends its next call at once (an agent loop, a pool
      // reusing the connection), so the read goes straight into the buffer, one recv per
      // request. Nothing within hot_idle: the read is cancelled and the connection parks.
      // A drained read (net/drained_read.hpp): after a request that did not fill the block,
      // the next one is awaited without a recv that fails first.
      const steady::duration wait = cfg_.keepalive_timeout;
      const auto hot = std::min<steady::duration>(hot_idle, wait);
      arm_read_deadline(hot);
      const std::size_t n = co_await stream_.socket().async_read_some(
          drained_buffer{buffer_.prepare(w_.read_blocks.block())}, redirect_error(use_awaitable, ec));
      disarm_read_deadline();
      if (!ec) {
        buffer_.commit(n);
      } else if (ec != asio::error::operation_aborted || !read_timed_out_ || wait <= hot) {
        break;
      } else if (park(wait - hot, ec)) {
        co_return;  // parked: this frame goes; park() starts a new run() on the next byte
      } else if (ec) {
        break;
      }
    }
    idle_ = false;
    bool keep = co_await handle_one();
    if (!keep) {
      linger = true;
      break;
    }
  }
  idle_ = false;
  if (linger && !aborting_)
    co_await linger_close();
  else
    close_socket();
}

// Parked: an idle connection holds no buffers and no coroutine, only its session, its socket
// and two pending operations (a one-byte read and its deadline). 10k idle keep-alive
// connections would otherwise pin 10k read and relay buffers (~240 MB), and each a run()
// frame and co_spawn's own (~1.3 KB). The socket is read once without waiting first (after a
// drained read a pending end of stream is not announced again, drained_read.hpp): if a byte
// is there it goes to buffer_ and park() returns false, as it does on an error (ec) or end of
// stream. Otherwise the read waits, and on its byte a new run() is spawned; true.
bool client_session::park(steady::duration wait, beast::error_code& ec) {
  buffer_.clear();
  buffer_.shrink_to_fit();
  for (std::string* s : {&parse_, &out_, &head_, &up_head_}) std::string().swap(*s);
  std::vector<header_view>().swap(up_headers_);
  decltype(extra_headers_)().swap(extra_headers_);
  prices_.reset();  // a parked connection keeps no price table alive past a reload
  const std::size_t n = stream_.socket().read_some(asio::buffer(&first_byte_, 1), ec);
  if (ec != asio::error::would_block) {
    if (!ec && n == 1) take_first_byte();
    return false;
  }
  ec = {};
  arm_read_deadline(wait);
  st_.parked_connections.fetch_add(1, std::memory_order_relaxed);
  stream_.socket().async_read_some(asio::buffer(&first_byte_, 1),
                                   [self = shared_from_this()](const beast::error_code& e, std::size_t got) {
                                     self->st_.parked_connections.fetch_sub(1, std::memory_order_relaxed);
                                     self->disarm_read_deadline();
                                     if (e || got != 1 || self->aborting_) {
                                       self->close_socket();
                                       return;
                                     }
                                     self->take_first_byte();
                                     spawn(self);
                                   });
  return true;
}

void client_session::take_first_byte() {
  auto b = buffer_.prepare(w_.read_blocks.block());
  *static_cast<char*>(b.data()) = first_byte_;
  buffer_.commit(1);
}

void client_session::spawn(const std::shared_ptr<client_session>& s) {
  asio::co_spawn(s->w_.ioc, s->run(), [](std::exception_ptr e) {
    if (!e) return;
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& ex) {
      log_line(log_level::error, "session failed").str("error", ex.what());
    } catch (...) {
      log_msg(log_level::error, "session failed");
    }
  });
}

// Half-close, then drain what the client still sends for a moment, so an error response is not
// destroyed by a TCP reset before the client has read it (RFC 9112 §9.6).
awaitable<void> client_session::linger_close() {
  beast::error_code ec;
  stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
  if (ec) {
    close_socket();
    co_return;
  }
  std::size_t drained = 0;
  std::array<char, 4096> sink;
  const auto until = steady::now() + 2s;
  while (drained < (1u << 20)) {
    const std::size_t n = co_await read_now_or_wait(asio::buffer(sink), until, ec);
    if (ec) break;
    drained += n;
  }
  close_socket();
}

// Reads what the socket holds without waiting (it is non-blocking), and waits (until `until`)
// only when it holds nothing. After a drained read (net/drained_read.hpp) an end of stream that
// came with the last request is not announced again: a wait alone would not see it and would
// hold the connection until its deadline.
awaitable<std::size_t> client_session::read_now_or_wait(asio::mutable_buffer b, steady::time_point until,
                                                       beast::error_code& ec) {
  const std::size_t n = stream_.socket().read_some(b, ec);
  if (ec != asio::error::would_block) co_return n;
  ec = {};
  stream_.expires_at(until);
  co_return co_await stream_.async_read_some(b, redirect_error(use_awaitable, ec));
}

awaitable<bool> client_session::send_local(int status, std::string body, bool keep, std::string_view allow,
                                           std::string_view request_id, std::string_view content_type) {
  http::response<http::string_body> res{static_cast<http::status>(status), client_version_};
  res.set(http::field::server, "tollgate");
  res.set(http::field::date, date_now());
  res.set(http::field::content_type, content_type);
  if (!allow.empty()) res.set(http::field::allow, allow);
  if (!request_id.empty()) res.set("x-request-id", request_id);
  for (const auto& [name, value] : extra_headers_) res.set(name, value);
  res.body() = std::move(body);
  res.keep_alive(keep);
  res.prepare_payload();
  // RFC 9110 §9.3.2: the answer to HEAD is the GET answer's head, Content-Length included, and no
  // content; bytes after it would be read by a keep-alive client as the next response.
  if (head_request_) res.body().clear();
  stream_.expires_after(local_write_timeout);
  beast::error_code ec;
  co_await http::async_write(stream_, res, redirect_error(use_awaitable, ec));
  co_return keep && !ec;
}

// Reads one request and answers it. Returns whether the connection stays open.
awaitable<bool> client_session::handle_one() {
  // Every answer tollgate gives itself leaves through one co_await at the end: GCC gives each
  // co_await site its own slots in the coroutine frame, allocated for every request (2,816 bytes
  // with one site per answer, 1,744 now).
  struct local_answer {
    errc error = errc::ok;       // an error reply (send_error)
    std::string_view message;
    bool keep = false;
    std::string_view allow;
    int status = 0;              // or a local reply (send_local), when error is ok
    std::string body;
  } answer;
  auto refuse = [&](errc e, std::string_view message = {}, bool keep = false, std::string_view allow = {}) {
    answer.error = e;
    answer.message = message;
    answer.keep = keep;
    answer.allow = allow;
  };

  beast::error_code ec;
  anthropic_errors_ = false;
  head_request_ = false;
  error_type_ = {};
  client_version_ = 11;
  // This call's own: a local answer (a 404, /healthz) after a rate-limited call on the same
  // connection must not carry that call's x-ratelimit-* or Retry-After.
  extra_headers_.clear();
  client_parser parser;
  parser.header_limit(static_cast<std::uint32_t>(std::min<std::size_t>(cfg_.max_header_bytes, UINT32_MAX)));
  // Until the route is known, the larger of the two limits (a Content-Length above it is refused
  // with the head); the body read below applies the route's own.
  const bool spooling = cfg_.max_upload_bytes > cfg_.max_body_bytes;
  parser.body_limit(spooling ? cfg_.max_upload_bytes : std::uint64_t{cfg_.max_body_bytes});
  // A request usually arrives whole in one read (run()): it is parsed from the buffer by the
  // synchronous read, which cannot block (the socket is non-blocking) and costs no timer, handler
  // or scheduler trip. Only a head still incomplete (would_block) goes to the async read, which
  // carries on where the parse stopped, under the header deadline.
  read_timed_out_ = false;
  std::size_t head_bytes = http::read_header(stream_, buffer_, parser, ec);
  if (ec == asio::error::would_block) {
    stream_.expires_never();
    arm_read_deadline(cfg_.header_timeout);
    head_bytes += co_await http::async_read_header(stream_, buffer_, parser, redirect_error(use_awaitable, ec));
    disarm_read_deadline();
  }
  if (ec && is_eof_like(ec)) co_return false;
  // Beast 1.81 checks header_limit per parse window, not over the whole head: field lines parsed
  // before a read that ended mid-head are not counted again, so a head could pass at up to ~2x
  // the limit, or not, depending on how TCP split it (tests/fuzz/findings #5). The head's own size
  // (start line to the blank line, as the parser consumed it) decides, whatever the reads; also
  // over a Content-Length above the body limit, which the parser checks at the head's end (so a
  // head over the limit is 431 whether Beast counted it whole or not).
  if ((!ec || ec == http::error::body_limit) && head_bytes > cfg_.max_header_bytes) ec = http::error::header_limit;

  call c;
  // A keep-alive connection's next call usually finds the table of its last: no count to move.
  if (const auto& table = w_.price_snapshot(); prices_ != table) prices_ = table;
  auto& req = parser.get();
  std::optional<target_parts> tp;
  route_decision rd;
  std::vector<const void*> head_fields;  // a chunked request's head fields (its trailers are not); else empty
  // RFC 9112 §2.2: empty lines before a request line are ignored (some clients send a CRLF after
  // a POST body); a few, as they may arrive a byte at a time. The buffer is then parsed again.
  if (ec && skipped_blank_ < 8 && !read_timed_out_ && ec != http::error::header_limit &&
      ec != http::error::body_limit && buffer_.size() > 0) {
    const auto* b = static_cast<const char*>(buffer_.data().data());
    std::size_t blank = 0;
    while (blank < buffer_.size() && skipped_blank_ + blank < 8 && (b[blank] == '\r' || b[blank] == '\n')) ++blank;
    if (blank > 0) {
      buffer_.consume(blank);
      skipped_blank_ += blank;
      co_return true;
    }
  }
  if (ec) {
    if (read_timed_out_) refuse(errc::request_timeout);
    else if (ec == http::error::header_limit)
      refuse(req.target().empty() && request_line_unterminated(buffer_) ? errc::uri_too_long : errc::headers_too_large);
    else if (ec == http::error::body_limit) {
      const auto t = spooling ? split_target(req.target()) : std::nullopt;
      const bool upload = t && classify(req.method_string(), t->path).route == route_kind::other;
      refuse(errc::body_too_large, upload ? upload_too_large : std::string_view{});
    }
    // 505 only for a well-formed "HTTP/x.y" we do not speak; junk in the version part is a 400.
    else if (ec == http::error::bad_version && request_line_has_http_version(buffer_)) refuse(errc::http_version);
    else {
      log_line(log_level::debug, "bad request framing").str("error", ec.message());
      refuse(errc::bad_request);
    }
  } else {
    c.t0 = steady::now();
    c.rec.start_ms = unix_ms_now();
    c.client_version = req.version();
    c.head_request = head_request_ = req.method() == http::verb::head;
    if (req.version() == 10) client_version_ = 10;
    skipped_blank_ = 0;
    // RFC 9112 §6.1: Transfer-Encoding in an HTTP/1.0 request is faulty framing (a smuggling
    // vector through 1.0 intermediaries): the request is answered, then the connection closed.
    if (req.version() == 10 && req.count(http::field::transfer_encoding) != 0) req.keep_alive(false);
    take_head(req, c.head);
    if (parser.chunked())
      for (const auto& f : req) head_fields.push_back(&f);
    const auto& h = c.head;
    if (req.version() != 10 && req.version() != 11) refuse(errc::http_version);
    // RFC 9112 §6.3: a request whose Transfer-Encoding does not end in chunked has no knowable
    // length; answer 400 and close rather than read the rest as the next request.
    else if (h.transfer_encoding && !parser.chunked()) refuse(errc::bad_request, "Transfer-Encoding must end in chunked.");
    // Any other transfer coding ("gzip, chunked") would be relayed still encoded, unlabelled.
    else if (h.transfer_encoding && !only_chunked_transfer(req))
      refuse(errc::bad_request, "Only the chunked transfer coding is supported in requests.");
    else if (h.hosts > 1) refuse(errc::duplicate_host);
    else if (h.hosts == 0 && req.version() == 11) refuse(errc::missing_host);
    else if (h.hosts == 1 && !is_valid_host_value(h.host)) refuse(errc::bad_request, "Invalid Host header.");
  }

  if (answer.error == errc::ok) {
    tp = split_target(req.target());
    if (tp) rd = classify(req.method_string(), tp->path);
    // Read the body (bounded) before answering anything, so the connection can stay open. A
    // pass-through call's body larger than max_body_bytes, or chunked, is read by
    // spool_request_body (a file, or memory then a file); anything else into memory within
    // max_body_bytes.
    const std::uint64_t length = parser.content_length().value_or(0);
    const std::uint64_t spool_above = std::min<std::uint64_t>(cfg_.max_body_bytes, spool_above_bytes);
    bool spool = spooling && !parser.is_done() && tp && !rd.local && rd.error == errc::ok &&
                 rd.route == route_kind::other && (parser.chunked() || length > spool_above);
    // A declared large body gets its file now (a 507 comes before any 100 Continue); a chunked
    // one starts in memory and moves to a file only past spool_above, so a small one never
    // touches the disk. Without a file (a read-only or full spool_dir) a body within
    // max_body_bytes is held in memory, as any body could be before uploads were spooled.
    bool no_spool = false;
    if (spool && parser.chunked()) {
      c.spooled.start(cfg_.spool_dir, spool_above, cfg_.max_body_bytes);
    } else if (spool && !open_spool(c, length <= cfg_.max_body_bytes)) {
      spool = false;
      no_spool = length > cfg_.max_body_bytes;
    }
    if (no_spool) {
      refuse(errc::upload_spool_failed);
    } else if (!parser.is_done() && !spool && length > cfg_.max_body_bytes) {
      refuse(errc::body_too_large);
    } else if (!parser.is_done()) {
      if (iequals(c.head.expect, "100-continue") && req.version() == 11) {
        static constexpr std::string_view cont = "HTTP/1.1 100 Continue\r\n\r\n";
        stream_.expires_after(local_write_timeout);
        co_await asio::async_write(stream_, asio::buffer(cont), redirect_error(use_awaitable, ec));
        if (ec) co_return false;
      }
      if (spool) {
        const errc e = co_await spool_request_body(parser, c);
        if (e == errc::client_aborted) co_return false;
        // The header moved to the file parser and back: the views into it are taken again.
        if (!head_fields.empty()) drop_trailers(req, head_fields);  // chunked
        take_head(req, c.head);
        tp = split_target(req.target());
        if (e != errc::ok) refuse(e, e == errc::body_too_large ? upload_too_large : std::string_view{});
      } else {
        parser.body_limit(cfg_.max_body_bytes);
        http::read(stream_, buffer_, parser, ec);  // what is here already, as for the head
        if (ec == asio::error::would_block) {
          stream_.expires_never();
          arm_read_deadline(cfg_.body_timeout);
          co_await http::async_read(stream_, buffer_, parser, redirect_error(use_awaitable, ec));
          disarm_read_deadline();
        }
        if (ec) {
          if (ec == http::error::body_limit) refuse(errc::body_too_large);
          else if (read_timed_out_) refuse(errc::request_timeout);
          else if (is_eof_like(ec)) co_return false;
          else refuse(errc::bad_request);
        } else if (!head_fields.empty()) {  // chunked
          drop_trailers(req, head_fields);
        }
      }
    }
  }

  if (answer.error == errc::ok) {
    const bool keep = req.keep_alive() && !st_.draining.load(std::memory_order_relaxed);
    if (!tp) {
      refuse(errc::bad_target, {}, keep);
    } else if (rd.local) {
      if (rd.error != errc::ok) {
        refuse(rd.error, {}, keep, rd.allow);
      } else if (tp->path.starts_with("/healthz")) {
        answer.status = 200;
        answer.body = R"({"status":"ok"})";
      } else {
        auto r = check_readiness(st_);
        answer.status = r.status;
        answer.body = std::move(r.body);
      }
      answer.keep = keep;
    } else if (rd.error == errc::not_found) {
      refuse(errc::not_found, {}, keep);
    } else {
      co_return co_await proxy(req, rd, *tp, c);
    }
  }
  if (answer.error != errc::ok)
    co_return co_await send_error(answer.error, answer.message, answer.keep, {}, answer.allow);
  co_return co_await send_local(answer.status, std::move(answer.body), answer.keep);
}

// The body of a pass-through call larger than max_body_bytes (or chunked), read into the unnamed
// file open_spool() created, or memory then a file (spool_body.hpp), within max_upload_bytes and
// body_timeout, like an in-memory body. The
// head moves to a parser with the file body (Beast's body-type conversion, allowed between the
// head and the body) and back to the client's request when the body is read. Returns ok, the
// refusal, or client_aborted when the client went away (the connection just closes).
bool client_session::open_spool(call& c, bool fits_in_memory) const {
  std::string why;
  if (c.spooled.open(cfg_.spool_dir, why)) return true;
  if (fits_in_memory)
    log_line(log_level::warn, "cannot store an upload in a file: held in memory").str("error", why);
  else
    log_line(log_level::error, "cannot store an upload").str("error", why);
  return false;
}

// The fields of a stored form, read from its first and last 64 KiB (inspect_form_ends): a large
// transcription or image edit is routed, rewritten and priced by its model as a small one is.
form_facts client_session::stored_form(const call& c) const {
  if (!is_form_data(c.head.content_type)) return {};  // nothing to read back (a raw upload part)
  constexpr std::uint64_t window = 64 * 1024;
  const std::uint64_t size = c.spooled.size();
  auto read = [&](std::uint64_t offset, std::uint64_t n) {
    std::string out(static_cast<std::size_t>(n), '\0');
    std::size_t got = 0;
    while (got < out.size()) {
      const long r = c.spooled.read_at(offset + got, out.data() + got, out.size() - got);
      if (r <= 0) break;
      got += static_cast<std::size_t>(r);
    }
    out.resize(got);
    return out;
  };
  if (size <= 2 * window) return inspect_form(read(0, size), c.head.content_type);
  return inspect_form_ends(read(0, window), read(size - window, window), size, c.head.content_type);
}

awaitable<errc> client_session::spool_request_body(client_parser& parser, call& c) {
  http::request_parser<spool_body, field_allocator<char>> sp(std::move(parser));
  sp.get().body() = std::move(c.spooled);
  sp.body_limit(cfg_.max_upload_bytes);
  // Only the async read: each of its reads completes through the scheduler, so a client that
  // sends a gigabyte as fast as loopback allows does not hold the worker's other connections up
  // (the synchronous read used for small bodies loops for as long as data keeps arriving).
  beast::error_code ec;
  stream_.expires_never();
  arm_read_deadline(cfg_.body_timeout);
  co_await http::async_read(stream_, buffer_, sp, redirect_error(use_awaitable, ec));
  disarm_read_deadline();
  parser.get().base() = std::move(sp.get().base());
  c.spooled = std::move(sp.get().body());
  if (!ec) {
    log_line(log_level::debug, "upload stored").integer("bytes", static_cast<std::int64_t>(c.spooled.size()));
    co_return errc::ok;
  }
  if (c.spooled.write_error() != 0) {
    log_line(log_level::error, "cannot store an upload")
        .str("error", std::strerror(c.spooled.write_error()))
        .str("spool_dir", cfg_.spool_dir);
    co_return errc::upload_spool_failed;
  }
  if (ec == http::error::body_limit) co_return errc::body_too_large;
  if (read_timed_out_) co_return errc::request_timeout;
  if (is_eof_like(ec)) co_return errc::client_aborted;
  co_return errc::bad_request;
}

// One walk of the parsed header: the fields tollgate reads, and the list the upstream's request
// head is written from (append_upstream_head).
void client_session::take_head(const client_request& req, call::head_fields& h) {
  h = {};  // taken again after a spooled body: the views are the header's as it is now
  up_headers_.clear();
  up_headers_.reserve(32);
  const std::string_view user_header = cfg_.policy.user_header;
  for (const auto& f : req) {
    up_headers_.push_back({f.name_string(), f.value()});
    if (!user_header.empty() && iequals(std::string_view(f.name_string().data(), f.name_string().size()), user_header))
      keep_first(h.end_user, f.value());
    switch (f.name()) {
      case http::field::host:
        ++h.hosts;
        keep_first(h.host, f.value());
        break;
      case http::field::transfer_encoding: h.transfer_encoding = true; break;
      case http::field::expect: keep_first(h.expect, f.value()); break;
      case http::field::authorization: keep_first(h.authorization, f.value()); break;
      case http::field::content_type: keep_first(h.content_type, f.value()); break;
      case http::field::content_encoding: keep_first(h.content_encoding, f.value()); break;
      case http::field::connection: keep_first(h.connection, f.value()); break;
      case http::field::upgrade: keep_first(h.upgrade, f.value()); break;
      case http::field::unknown: {
        const std::string_view name(f.name_string().data(), f.name_string().size());
        if (iequals(name, "x-request-id")) {
          keep_first(h.request_id, f.value());
        } else if (iequals(name, "x-api-key")) {
          keep_first(h.api_key, f.value());
        } else if (iequals(name, "anthropic-version")) {
          keep_first(h.anthropic_version, f.value());
        }
        break;
      }
      default: break;
    }
  }
}

// A JSON body sent with Content-Encoding gzip or deflate (some HTTP clients compress requests) is
// decoded in place, within server.max_body_bytes decoded (a small bomb must not expand into
// memory), and forwarded decoded without the header: the upstream is not assumed to accept
// compressed requests, and tollgate must read the body to route, admit and meter it. Other
// codings are refused (415) with their name rather than read as malformed JSON.
std::pair<errc, std::string> client_session::decode_request_body(client_request& req, call& c) const {
  const std::string_view enc = trim_ows(c.head.content_encoding);
  if (enc.empty() || iequals(enc, "identity")) return {errc::ok, {}};
  if (!is_decodable_coding(enc))
    return {errc::unsupported_media_type,
            "Content-Encoding '" + std::string(enc.substr(0, 64)) + "' is not supported; send the body uncompressed, gzip or deflate."};
  std::string decoded;
  inflater z;
  const std::size_t limit = cfg_.max_body_bytes;
  // In 4 KB slices, stopping once past the limit: deflate expands at most ~1,032x, so a bomb
  // costs the I/O thread a few milliseconds, not the seconds its whole expansion would.
  const std::string_view body = req.body();
  for (std::size_t pos = 0; pos < body.size() && decoded.size() <= limit && !z.ended(); pos += 4096) {
    if (!z.feed(body.substr(pos, 4096), decoded, limit + 1))
      return {errc::invalid_json, "The request body is not valid " + std::string(enc) + " data."};
  }
  if (decoded.size() > limit) return {errc::body_too_large, {}};
  if (!z.ended()) return {errc::invalid_json, "The request body is not valid " + std::string(enc) + " data (truncated)."};
  req.body() = std::move(decoded);
  c.body_decoded = true;
  return {errc::ok, {}};
}

// The prompt's token estimate, computed on first use: admit() skips the tally when no
// admission control reads it, and a call that ends without upstream usage (an abort, a cut
// stream) tallies here, from the body as sent: the model and include_usage rewrites leave the
// prompt members' values as they were (a rewrite through nlohmann's DOM keeps only the last of
// duplicate members, which the client's body would have counted twice).
std::int64_t client_session::prompt_estimate(call& c, const client_request& req) {
  if (!c.facts.prompt_estimated) {
    const request_facts f = inspect_request(req.body());
    c.facts.prompt_tokens_estimate = f.prompt_tokens_estimate;
    c.facts.cache_control = f.cache_control;
    c.facts.prompt_estimated = true;
  }
  return c.facts.prompt_tokens_estimate;
}

// ---------------------------------------------------------------------------------------------
// Proxying one /v1 call

awaitable<bool> client_session::proxy(client_request& req, const route_decision& rd,
                                      const target_parts& tp, call& c) {
  bool keep = req.keep_alive() && !st_.draining.load(std::memory_order_relaxed);
  auto& rec = c.rec;
  // Errors in Anthropic's shape on the Messages API, and for an Anthropic client's other calls.
  anthropic_errors_ = tp.path.starts_with("/v1/messages") || !c.head.anthropic_version.empty();
  rec.route = rd.route;
  rec.method = std::string(req.method_string());
  c.meter = usage_is_new_spend(rd.route, req.method_string(), tp.path);
  if (!c.meter && rd.route == route_kind::other) {
    const std::string_view id = stored_response_id(req.method_string(), tp.path);
    if (!id.empty() && st_.background_responses.contains(id)) {
      c.meter = true;
      c.background_id = std::string(id);
    }
    if (const std::string_view batch = batch_id_of(req.method_string(), tp.path);
        !batch.empty() && st_.pending_batches.contains(batch)) {
      c.meter = true;
      c.batch_id = std::string(batch);
    }
    if (const std::string_view batch = message_batch_results_id(req.method_string(), tp.path);
        !batch.empty() && st_.pending_batches.contains(batch)) {
      c.meter = true;
      c.message_batch_id = std::string(batch);
    }
  }
  if (rd.route == route_kind::other) {
    c.creates_batch = creates_batch(req.method_string(), tp.path);
    c.batch_objects = holds_message_batches(tp.path);
  }
  // A handshake has no body (RFC 6455 §4.1); a GET that carries one is relayed as a plain call.
  c.websocket = rd.route == route_kind::other && req.body().empty() && !c.spooled.active() &&
                is_websocket_upgrade(req.method_string(), req.version(), c.head.connection, c.head.upgrade);
  // The Responses API's WebSocket mode: its row is a responses call's, as its POSTs are.
  if (c.websocket && (tp.path == "/v1/responses" || tp.path == "/v1/responses/")) rec.route = route_kind::responses;
  if (auto id = c.head.request_id; !id.empty() && id.size() <= 200)
    rec.request_id = std::string(id);
  else
    rec.request_id = new_request_id(rec.start_ms);

  // Admission: a ledger slot is reserved before anything else, so every call we accept has a row.
  if (!st_.ledger_->reserve()) {
    log_line(log_level::warn, "ledger queue full: refusing call").str("request_id", rec.request_id);
    co_return co_await send_error(errc::ledger_backpressure, {}, keep, rec.request_id);
  }
  st_.inflight.fetch_add(1, std::memory_order_relaxed);
  st_.metrics_->inflight.fetch_add(1, std::memory_order_relaxed);

  // Admission is synchronous (admit()): its locals and message temporaries stay off this
  // coroutine's frame (GCC keeps every local of a coroutine in its frame), which then fits Asio's
  // per-thread frame cache (frames up to 1,020 bytes are recycled; this one was 2,752 bytes and
  // went to malloc and free on every call).
  admission a;
  admit(req, rd, tp, c, a);
  if (a.refusal != errc::ok) {
    c.error = a.refusal;
    rec.status = http_status(a.refusal);
    bool k = co_await send_error(a.refusal, a.message, keep, rec.request_id, rd.allow);
    finish_call(c);
    co_return k;
  }
  const auto& tries = a.tries;
  if (c.websocket) {
    co_await tunnel(tries, req, rd, tp, c);
    finish_call(c);
    co_return false;  // the connection was the session's
  }

  // tp views the client's target, which the first attempt replaces: keep copies for the others.
  const std::string client_path(tp.path), client_query(tp.query);
  start_watch();
  bool keep_client = keep;
  int attempts = 0;
  for (std::size_t k = 0; k < tries.size(); ++k) {
    auto& t = *tries[k].t;
    const bool probe = tries[k].probe;
    const bool last = k + 1 == tries.size();
    write_upstream_head(t, req, c, rd, client_path, client_query);
    rec.upstream = t.cfg.name;
    c.price_multiplier = t.cfg.price_multiplier;
    c.reported_cost = t.cfg.reported_cost;
    c.failover_status = 0;

    t.inflight.fetch_add(1, std::memory_order_relaxed);
    int before = rec.attempts;
    rec.attempts = 0;
    auto r = co_await attempt(*w_.pools[t.index], req, c, keep_client, !last);
    attempts += rec.attempts;
    rec.attempts = before;
    t.inflight.fetch_sub(1, std::memory_order_relaxed);

    // The breaker's verdict: connect errors, timeouts and 5xx count; a 429 or other 4xx is a
    // healthy upstream saying no.
    const bool gone_now = client_gone() || c.error == errc::client_aborted;
    const bool connect_stage = c.error == errc::upstream_connect || c.error == errc::upstream_connect_timeout ||
                               c.error == errc::upstream_tls;
    const bool timed_out = c.error == errc::upstream_first_byte_timeout || c.error == errc::upstream_idle_timeout ||
                           c.error == errc::upstream_total_timeout;
    const int status = c.failover_status ? c.failover_status : rec.status;
    if (gone_now)
      t.breaker.on_abandon(probe);
    else if (connect_stage || timed_out || status >= 500 || (!c.head_sent && c.error != errc::ok))
      t.breaker.on_failure(steady::now(), probe);
    else
      t.breaker.on_success(probe);

    // Fail over only while the client has seen nothing, and only for failures that cannot have
    // produced a billable answer (no connection, no first byte) or that the upstream declared
    // (429/5xx): never after a streamed byte, so a call is never billed twice.
    bool retriable = r == exchange_result::failover ||
                     (!c.head_sent && (connect_stage || c.error == errc::upstream_first_byte_timeout));
    if (!last && !gone_now && retriable) {
      log_line(log_level::warn, "upstream failed; trying the next one")
          .str("request_id", rec.request_id)
          .str("upstream", t.cfg.name)
          .str("error", c.failover_status ? "status " + std::to_string(c.failover_status) : std::string(error_name(c.error)));
      st_.upstream_retries.fetch_add(1, std::memory_order_relaxed);
      if (c.error != errc::ok) st_.metrics_->upstream_error(error_name(c.error));
      c.error = errc::ok;
      rec.status = 0;
      rec.first_byte_ms = -1;
      rec.upstream_request_id.clear();
      continue;
    }
    break;
  }
  rec.attempts = std::max(attempts, 1);
  bool gone = client_gone();
  stop_watch();

  if (gone && c.error == errc::ok) c.error = errc::client_aborted;
  if (!c.head_sent) {
    if (c.error == errc::client_aborted || gone) {
      rec.status = 499;
      keep_client = false;
    } else {
      if (c.error == errc::ok) c.error = errc::upstream_reset;
      st_.metrics_->upstream_error(error_name(c.error));
      rec.status = http_status(c.error);
      keep_client = co_await send_error(c.error, {}, keep_client, rec.request_id);
    }
  } else if (c.error != errc::ok) {
    keep_client = false;
    if (c.error != errc::client_aborted && c.error != errc::upstream_stream_truncated)
      st_.metrics_->upstream_error(error_name(c.error));
  }
  finish_call(c);
  co_return keep_client && !aborting_;
}

// Admission of one call: the refusals before anything goes upstream (route errors,
// authentication, the body's JSON, draining, routing, rate limits, spend guards and budgets),
// then the upstreams to try and the body's rewrites (model, include_usage). Fills `a`;
// a.refusal stays errc::ok when the call may go upstream.
void client_session::admit(client_request& req, const route_decision& rd, const target_parts& tp, call& c,
                           admission& a) {
  auto& rec = c.rec;
  if (rd.error != errc::ok) return a.refuse(rd.error, {});

  // Client authentication: the key the SDK sends (Bearer, or x-api-key from Anthropic SDKs) is
  // looked up by hash; it is never forwarded and never recorded, only its name.
  std::shared_ptr<const client_key_config> key;
  if (st_.policy && cfg_.policy.auth != auth_mode::off) {
    std::string_view presented = c.head.api_key;
    if (presented.empty()) {
      std::string_view authz = c.head.authorization;
      if (authz.size() > 7 && beast::iequals(authz.substr(0, 7), "bearer ")) presented = authz.substr(7);
      while (!presented.empty() && presented.front() == ' ') presented.remove_prefix(1);
    }
    if (!presented.empty()) key = st_.policy->find_key(presented);
    // RFC 9110 section 11.6.1: a 401 says which scheme it wants.
    const bool missing = presented.empty() && cfg_.policy.auth == auth_mode::required;
    if (missing || (!presented.empty() && !key)) extra_headers_.emplace_back("www-authenticate", "Bearer realm=\"tollgate\"");
    if (missing)
      return a.refuse(errc::unauthorized,
                      "You didn't provide an API key. Send it as 'Authorization: Bearer <key>' or 'x-api-key'.");
    if (!presented.empty() && !key) return a.refuse(errc::unauthorized, "Incorrect API key provided.");
    if (key) {
      rec.client_key_id = key->name;
      rec.team = key->team;
    }
  }
  if (!c.head.end_user.empty() && !valid_utf8(c.head.end_user))
    return a.refuse(errc::bad_request, "The " + cfg_.policy.user_header + " header must be UTF-8 text.");
  if (rd.json_body) {
    if (!is_json_content_type(c.head.content_type)) return a.refuse(errc::unsupported_media_type, {});
    if (auto e = decode_request_body(req, c); e.first != errc::ok) return a.refuse(e.first, e.second);
    // The prompt tally is skipped unless admission control will read it (prompt_estimate()).
    c.facts = inspect_request(req.body(), default_max_depth, st_.policy && st_.policy->needs_admission(key.get()));
    if (c.facts.problem != request_problem::none) return a.refuse(errc::invalid_json, c.facts.problem_detail);
    // The ledger keeps a client's text to 256 bytes, as every model name it records: a row must
    // not carry a 100 KB model id (routing and pricing read c.facts.model whole).
    rec.requested_model = utf8_prefix(c.facts.model, 256);
    rec.stream = c.facts.stream;
    rec.user = utf8_prefix(c.facts.user, 256);
  }
  // user_header: the end user as the app's own backend or edge names them (it must be the one to
  // set the header), over what the body says; on every route, metered or not.
  if (!c.head.end_user.empty()) rec.user = utf8_prefix(c.head.end_user, 256);
  // A pass-through call's model: a JSON body's top-level `model` (count_tokens, image generation,
  // responses/compact), a form's `model` field (audio, image edits) or the id of
  // GET /v1/models/{id}. Routing rules apply to it as to the metered routes (count_tokens for a
  // claude-* model goes where claude-* calls go) and a JSON body gets the rule's rewrite. Read
  // only, never refused: the body is the upstream's business, and c.facts stays empty (admission
  // control reserves nothing for these calls). A call that may still bring usage (c.meter:
  // images, audio) records it as requested_model, so the ledger can price it (these replies
  // name none).
  request_facts pass_facts;
  std::string pass_model;
  std::optional<std::pair<std::size_t, std::size_t>> form_model;  // the form's model value (offset, length)
  if (rd.route == route_kind::other && (!req.body().empty() || c.spooled.active())) {
    if (is_json_content_type(c.head.content_type) && c.head.content_encoding.empty() && !c.spooled.active() &&
        req.body().size() <= pass_through_inspect_limit) {
      pass_facts = inspect_request(req.body(), default_max_depth, false);
      if (pass_facts.problem == request_problem::none && pass_facts.has_model) pass_model = pass_facts.model;
      else pass_facts.has_model = false;
      if (c.meter && (tp.path == "/v1/audio/speech" || tp.path == "/v1/audio/speech/"))
        c.media_of().speech = speech_request_of(req.body());
      if (c.meter && (c.media = media_call_of(req.method_string(), tp.path)) != media_call::none)
        c.media_of().media_req = media_request_of(req.body());
    } else if (auto form = c.spooled.active() ? stored_form(c) : inspect_form(req.body(), c.head.content_type);
               form.has_model || !form.size.empty()) {
      if (form.has_model) {
        pass_model = std::move(form.model);
        form_model.emplace(form.model_at, form.model_len);
      }
      pass_facts.stream = form.stream;
      if (c.meter && (c.media = media_call_of(req.method_string(), tp.path)) != media_call::none)
        c.media_of().media_req = {std::move(form.size), std::move(form.quality), std::move(form.seconds), std::move(form.n)};
    } else if (c.meter) {
      c.media = media_call_of(req.method_string(), tp.path);
    }
    if (c.meter && !pass_model.empty()) {
      rec.requested_model = utf8_prefix(pass_model, 256);
      rec.stream = pass_facts.stream;
    } else if (c.media == media_call::images || c.media == media_call::video) {
      // The API's default model when the request names none (an image variation never does). A
      // remix names none: its model is the original's, which its reply names.
      rec.requested_model = c.media == media_call::images ? "dall-e-2" : "sora-2";
      pass_model = rec.requested_model;
    }
  } else if (c.websocket) {
    // A Realtime session names its model in the handshake's query (?model=gpt-realtime): routing
    // rules apply to it, and the ledger prices the session by it until the session names its own.
    pass_model = model_id_of_path(query_param(tp.query, "model"));
    rec.requested_model = utf8_prefix(pass_model, 256);
  } else if (rd.route == route_kind::models && tp.path.size() > 11) {
    std::string_view id = tp.path.substr(11);
    if (id.ends_with('/')) id.remove_suffix(1);
    pass_model = model_id_of_path(id);
  }
  if (st_.draining.load(std::memory_order_relaxed)) return a.refuse(errc::shutting_down, {});

  // Routing: the upstreams to try, in order, and the model to send them.
  thread_local std::mt19937_64 route_rng{std::random_device{}()};
  const std::string& asked_model = rd.json_body ? c.facts.model : pass_model;
  route_plan plan = st_.router->plan(tp.path, asked_model, route_rng(), !c.head.anthropic_version.empty());
  if (plan.order.empty()) {
    std::string msg = "No configured upstream serves " + std::string(tp.path);
    if (!asked_model.empty()) msg += " for model '" + asked_model + "'";
    msg += ".";
    return a.refuse(errc::no_upstream, msg);
  }
  if (!rd.json_body) {
    // A pass-through JSON body names the model the rule rewrites to; admission control stays out.
    if (!plan.rewrite.empty() && pass_facts.has_model && plan.rewrite != pass_model) {
      req.body() = replace_model(req.body(), plan.rewrite, pass_facts);
      if (c.meter) c.sent_model = plan.rewrite;
    }
    // A form's model field: its value's bytes are replaced, in memory or, for a stored form, as
    // send_spooled() sends the file (which stays as received).
    if (!plan.rewrite.empty() && form_model && plan.rewrite != pass_model) {
      if (c.spooled.active())
        c.spool_edit = std::make_unique<call::splice>(call::splice{form_model->first, form_model->second, plan.rewrite});
      else
        req.body().replace(form_model->first, form_model->second, plan.rewrite);
      if (c.meter) c.sent_model = plan.rewrite;
    }
    // A Realtime handshake names its model in the query: the rule's model goes there (tunnel()).
    if (c.websocket && !plan.rewrite.empty() && plan.rewrite != pass_model) c.sent_model = plan.rewrite;
    plan.rewrite.clear();
  }
  // Spend controls: rate limits, spend guards and budgets decide before anything goes upstream.
  std::string send_model = plan.rewrite.empty() ? c.facts.model : plan.rewrite;
  if (st_.policy && st_.policy->needs_admission(key.get())) {
    double multiplier = 0;
    for (auto i : plan.order) multiplier = std::max(multiplier, st_.upstreams[i]->cfg.price_multiplier);
    // An image or video generation is reserved at its model (the body's, else the API's
    // default) for the images or seconds it asks. A remix names no model, size or length: it
    // reserves its original's (a video created through tollgate, remembered), else the
    // priciest per-second output of the price table for the longest video (12 s).
    const bool media = c.media != media_call::none;
    const bool remix = c.media == media_call::video_remix && send_model.empty();
    std::string_view price_id = media && send_model.empty() ? pass_model : send_model;
    const model_price* price = remix ? nullptr : prices().resolve(price_id);
    token_usage worst;
    std::uint8_t worst_writes = 0;  // request_facts::cache_control
    double hops_usd = 0;            // server-side fallbacks' worst case, beside the call's own
    std::int64_t hops_tokens = 0;
    if (media) {
      worst = media_worst(c.media, c.media_of().media_req);
      if (remix) {
        const auto v = st_.videos.find(remix_source_id(req.method_string(), tp.path));
        if (v && (price = prices().resolve(v->model)) != nullptr) {
          worst.video_seconds = v->seconds;
          worst.media_w = v->w;
          worst.media_h = v->h;
        } else if (const auto [p, unit] = prices().priciest_per_second(); p != nullptr) {
          price = p;
          worst.media_w = unit.w;
          worst.media_h = unit.h;
          worst.media_hd = unit.hd == 1;
        }
        if (price) price_id = price->name;
      }
    } else {
      // Completion tokens: max_tokens (or the default) for each of the `n` choices; none for
      // embeddings, which produce none. Capped so that a huge max_tokens cannot overflow.
      std::int64_t max_out = std::min<std::int64_t>(c.facts.max_tokens.value_or(cfg_.policy.default_max_tokens), 1LL << 40);
      max_out = rd.route == route_kind::embeddings ? 0 : max_out * c.facts.choices;
      worst.prompt = prompt_estimate(c, req);
      worst.completion = max_out;
      // At the prices the request asks for: fast mode and priority cost several times standard.
      worst.tier = c.facts.fast ? service_tier::fast : c.facts.priority ? service_tier::priority : service_tier::none;
      worst.geo_us = c.facts.geo_us;
      worst_writes = c.facts.cache_control;
      // Anthropic's server-side fallbacks: when the model declines, each entry in turn runs on the
      // whole prompt again, up to its own max_tokens, and every hop that ran is billed. The worst
      // case is that they all run. "default" (a server-defined chain, models not named) is
      // reserved as one more hop at the requested model's prices.
      for (const auto& hop : c.facts.fallbacks) {
        token_usage w = worst;
        w.completion = std::min<std::int64_t>(hop.max_tokens.value_or(w.completion), 1LL << 40);
        if (hop.fast) w.tier = *hop.fast ? service_tier::fast : c.facts.priority ? service_tier::priority : service_tier::none;
        hops_tokens += w.prompt + w.completion;
        if (const model_price* p = prices().resolve(hop.model)) hops_usd += reserve_cost(*p, w, worst_writes, multiplier);
      }
      if (c.facts.default_fallbacks) {
        hops_tokens += worst.prompt + worst.completion;
        if (price) hops_usd += reserve_cost(*price, worst, worst_writes, multiplier);
      }
    }
    policy_engine::call_facts pf;
    pf.key = key.get();
    pf.team = rec.team;
    pf.user = rec.user;  // as the ledger keeps it (256 bytes): what a warm start reads back
    pf.price_model = price ? std::string_view(price->name) : std::string_view{};
    if (media && price) {
      if ((c.media == media_call::images ? price->per_image : price->per_second).empty())
        worst = {};  // token-priced (gpt-image-1): its reply's usage prices it; nothing to reserve here
      else if (!compute_cost(*price, worst).priced)
        pf.price_model = {};  // an output its entry has no price for: as a model without a price
    }
    pf.model = price_id;
    pf.reserve_usd = price ? reserve_cost(*price, worst, worst_writes, multiplier) + hops_usd : 0.0;
    if (!price && !media) pf.stated = reserve_stated(plan, rd.route, c.facts.stream, price_id, worst, pf.reserve_usd);
    struct reserve_context {
      const price_table& prices;
      const token_usage& worst;
      std::uint8_t writes;
      double multiplier, hops_usd;
    } rc{prices(), worst, worst_writes, multiplier, hops_usd};
    pf.reserve_ctx = &rc;
    pf.reserve_at = [](const void* ctx, std::string_view model) {
      const auto& r = *static_cast<const reserve_context*>(ctx);
      const model_price* p = r.prices.resolve(model);
      return p ? reserve_cost(*p, r.worst, r.writes, r.multiplier) + r.hops_usd : 0.0;
    };
    pf.reserve_tokens = worst.prompt + worst.completion + hops_tokens;
    pf.now_ms = unix_ms_now();
    auto d = st_.policy->admit(pf);
    c.ticket = d.ticket;
    c.stated_reserve = pf.stated && d.ticket != 0;
    if (d.rate_headers) {
      if (d.limit_requests > 0) {
        extra_headers_.emplace_back("x-ratelimit-limit-requests", std::to_string(d.limit_requests));
        extra_headers_.emplace_back("x-ratelimit-remaining-requests", std::to_string(d.remaining_requests));
        extra_headers_.emplace_back("x-ratelimit-reset-requests", format_reset(d.reset_requests_ms));
      }
      if (d.limit_tokens > 0) {
        extra_headers_.emplace_back("x-ratelimit-limit-tokens", std::to_string(d.limit_tokens));
        extra_headers_.emplace_back("x-ratelimit-remaining-tokens", std::to_string(d.remaining_tokens));
        extra_headers_.emplace_back("x-ratelimit-reset-tokens", format_reset(d.reset_tokens_ms));
      }
    }
    switch (d.outcome) {
      case policy_engine::decision::admit: break;
      case policy_engine::decision::budget_exceeded:
        // When the budget can take calls again: in a second when only calls in flight hold it,
        // else when its period ends (informative: x-should-retry stays false).
        extra_headers_.emplace_back("retry-after", std::to_string(std::max<std::int64_t>(1, d.retry_after_s)));
        if (d.unpriced)
          return a.refuse(errc::budget_exceeded, "Model '" + std::string(price_id) + "' has no price" +
                                                     (media && price ? " for this size or quality" : "") +
                                                     ", so the hard budget " + d.scope + " (" + d.period +
                                                     ") cannot hold its calls: add it to the price table, or send it through an upstream that "
                                                     "states each call's cost (upstream.reported_cost).");
        return a.refuse(errc::budget_exceeded, "Budget " + d.scope + " (" + d.period + ") of " + format_usd(d.limit_usd) +
                                                   " would be exceeded: " + format_usd(d.spent_usd) + " spent.");
      case policy_engine::decision::rate_limited:
        extra_headers_.emplace_back("retry-after", std::to_string(std::max<std::int64_t>(1, d.retry_after_s)));
        error_type_ = d.rate_kind == "tokens" ? "tokens" : "requests";
        return a.refuse(errc::rate_limited, "Rate limit reached for " + d.scope + " on " + d.rate_kind +
                                                " per min. Retry after " +
                                                std::to_string(std::max<std::int64_t>(1, d.retry_after_s)) + "s.");
      case policy_engine::decision::guard_rejected:
        extra_headers_.emplace_back("retry-after", std::to_string(std::max<std::int64_t>(1, d.retry_after_s)));
        return a.refuse(errc::spend_guard, "Spend guard " + d.scope + " tripped: " + format_usd(d.spent_usd) +
                                               " in the last " + d.period + " (max " + format_usd(d.limit_usd) + ").");
    }
    // A reroute changes the model of a metered route's JSON body; a pass-through call (an image,
    // a file, a video) keeps its body, so it is not sent to the fallback's upstream either.
    if (!d.reroute_model.empty() && d.reroute_model != send_model && rd.json_body) {
      log_line(log_level::warn, "spend guard tripped: call rerouted")
          .str("request_id", rec.request_id)
          .str("scope", d.reroute_scope)
          .str("from", send_model)
          .str("to", d.reroute_model);
      send_model = d.reroute_model;
      plan = st_.router->plan(tp.path, send_model, route_rng(), !c.head.anthropic_version.empty());
      if (!plan.rewrite.empty()) send_model = plan.rewrite;
      if (plan.order.empty())
        return a.refuse(errc::no_upstream, "No configured upstream serves the fallback model '" + send_model + "'.");
    }
  }

  // Tried in plan order, skipping upstreams with no key, at their in-flight limit or with an open
  // breaker; a breaker never refuses a call no other upstream could serve, so when every one is
  // skipped the first one with a key is tried anyway.
  {
    auto now = steady::now();
    upstream_node* fallback = nullptr;
    for (auto i : plan.order) {
      auto& t = *st_.upstreams[i];
      if (t.cfg.api_key.empty()) continue;
      if (!fallback) fallback = &t;
      if (t.cfg.max_inflight != 0 && t.inflight.load(std::memory_order_relaxed) >= t.cfg.max_inflight) continue;
      bool probe = false;
      if (t.breaker.allow(now, probe)) a.tries.push_back({&t, probe});
    }
    if (a.tries.empty()) {
      if (!fallback) return a.refuse(errc::upstream_key_missing, {});
      a.tries.push_back({fallback, false});
    }
  }
  if (send_model != c.facts.model && rd.json_body && c.facts.has_model) {
    req.body() = replace_model(req.body(), send_model, c.facts);
    c.sent_model = send_model;
  }

  // Ask the upstream for usage on streams; the client will not see the extra chunk.
  if (c.facts.stream && !c.facts.include_usage &&
      (rd.route == route_kind::chat_completions || rd.route == route_kind::completions)) {
    c.strip = true;
    req.body() = add_include_usage(req.body(), c.facts);
  }
}

// The request head of one attempt on upstream t, into up_head_, from the client's headers
// (append_upstream_head: hop-by-hop headers and the client's credentials out; Host, credential,
// x-request-id and Content-Length tollgate's). The parsed request is not modified.
void client_session::write_upstream_head(const upstream_node& t, const client_request& req, const call& c,
                                         const route_decision& rd, std::string_view path, std::string_view query) {
  const bool client_x_api_key = c.head.api_key.data() != nullptr;
  const bool anthropic_api = rd.route == route_kind::messages || path.starts_with("/v1/messages");
  const bool use_x_api_key = t.cfg.auth_header == upstream_auth::x_api_key ||
                             (t.cfg.auth_header == upstream_auth::automatic &&
                              (t.cfg.protocol == upstream_protocol::anthropic || (anthropic_api && client_x_api_key)));
  const std::string target = upstream_target(t.url, path, query);
  upstream_head uh;
  uh.method = req.method_string();
  uh.target = target;
  uh.host = t.url.host_header;
  uh.credential_name = use_x_api_key ? "x-api-key" : "Authorization";
  uh.credential_value = use_x_api_key ? std::string_view(t.cfg.api_key) : std::string_view(t.bearer);
  uh.request_id = c.rec.request_id;
  if (t.cfg.protocol == upstream_protocol::anthropic) uh.anthropic_version = "2023-06-01";
  // The answer must be readable to be edited (a stream, batch objects) or read (batch results).
  uh.drop_accept_encoding = c.strip || c.batch_objects || !c.message_batch_id.empty();
  uh.drop_content_encoding = c.body_decoded;
  // A metered answer must come in a coding the meter reads: Python's httpx offers br and zstd
  // when their modules are installed, and an answer in either would leave the call unmetered.
  uh.meterable_encodings_only = rd.json_body;
  uh.websocket = c.websocket;
  uh.body_size = c.spooled.active() ? c.spooled_size_sent() : req.body().size();
  uh.drop_header = cfg_.policy.user_header;
  up_head_.clear();
  append_upstream_head(up_headers_, uh, up_head_);
}

// The upstream response's fields tollgate reads (one walk), how the body is relayed, and the
// response head for the client, serialized straight into head_ (no intermediate fields
// container: one allocation-free pass over the upstream's headers). A plain function, so its
// locals stay off exchange()'s coroutine frame (2,208 bytes before, 1,888 now).
client_session::response_shape client_session::shape_response(const upstream_parser& p, call& c, bool& keep_client) {
  auto& rec = c.rec;
  const auto& ures = p.get();
  const int status = ures.result_int();
  const bool ok2xx = status / 100 == 2;
  response_shape sh;
  // The response fields tollgate reads, in one walk (each operator[] was a search).
  std::string_view upstream_id, upstream_rid, content_type, encoding, connection_value, length_value;
  std::string_view litellm_cost;
  bool has_date = false;
  for (const auto& f : ures) {
    switch (f.name()) {
      case http::field::date: has_date = true; break;
      case http::field::content_type: keep_first(content_type, f.value()); break;
      case http::field::content_encoding: keep_first(encoding, f.value()); break;
      case http::field::connection: keep_first(connection_value, f.value()); break;
      case http::field::content_length: keep_first(length_value, f.value()); break;
      case http::field::unknown: {
        const std::string_view name(f.name_string().data(), f.name_string().size());
        if (iequals(name, "x-request-id"))
          keep_first(upstream_id, f.value());
        else if (iequals(name, "request-id"))
          keep_first(upstream_rid, f.value());
        else if (iequals(name, "x-litellm-response-cost"))
          keep_first(litellm_cost, f.value());
        break;
      }
      default: break;
    }
  }
  if (!upstream_id.empty())
    rec.upstream_request_id = std::string(upstream_id);
  else if (!upstream_rid.empty())
    rec.upstream_request_id = std::string(upstream_rid);

  sh.sse = is_event_stream(content_type);
  // A LiteLLM proxy states what it priced the call at in a header (USD), sent before a stream's
  // tokens exist: read for whole replies only, and only a positive figure (its 0 also means
  // "no price known"). A cost in the usage itself, when there is one, comes first.
  c.header_cost_usd = -1;
  if (!litellm_cost.empty() && !sh.sse && ok2xx) {
    double v = 0;
    const auto [end, err] = std::from_chars(litellm_cost.data(), litellm_cost.data() + litellm_cost.size(), v);
    if (err == std::errc{} && end == litellm_cost.data() + litellm_cost.size() && std::isfinite(v) && v > 0)
      c.header_cost_usd = v;
  }
  sh.compressed = !encoding.empty() && !beast::iequals(encoding, "identity");
  sh.decodable = is_decodable_coding(encoding);
  // A compressed stream is edited decoded, and sent on without its Content-Encoding (identity is
  // always acceptable): tollgate asked the upstream for no coding, but one that compresses anyway
  // would otherwise show the client the usage chunk it never asked for.
  sh.edit_events = sh.sse && c.strip && (!sh.compressed || sh.decodable) && ok2xx;

  // result_int(): a status Beast has no name for (Anthropic's 529, Cloudflare's 520) must pass
  // through as its number, not as "unknown".
  const bool no_body = c.head_request || status == 204 || status == 304;
  if (no_body)
    sh.mode = framing::none;
  else if (!sh.edit_events && p.content_length())
    sh.mode = framing::length;
  else if (c.client_version == 11)
    sh.mode = framing::chunked;
  else
    sh.mode = framing::close;
  if (sh.mode == framing::close) keep_client = false;
  head_.clear();
  {
    auto field = [this](std::string_view name, std::string_view value) {
      head_.append(name).append(": "sv).append(value).append("\r\n"sv);
    };
    char num[24];
    auto decimal = [&num](auto v) {
      return std::string_view(num, static_cast<std::size_t>(std::to_chars(num, num + sizeof num, v).ptr - num));
    };
    head_.append(c.client_version == 10 ? "HTTP/1.0 " : "HTTP/1.1 ");
    head_.append(decimal(status)).append(" "sv).append(ures.reason()).append("\r\n"sv);
    for (const auto& f : ures) {
      auto name = f.name_string();
      if (!is_safe_response_header(name) || f.name() == http::field::content_length ||
          (sh.edit_events && sh.compressed && f.name() == http::field::content_encoding) ||
          (!connection_value.empty() && connection_lists(connection_value, name)))
        continue;
      if (beast::iequals(name, "x-request-id")) {
        field("x-upstream-request-id", f.value());
        continue;
      }
      // tollgate's own x-ratelimit-* / retry-after replace the upstream's of the same name.
      bool replaced = false;
      for (const auto& e : extra_headers_) replaced = replaced || beast::iequals(name, e.first);
      if (!replaced) field(name, f.value());
    }
    field("x-request-id", rec.request_id);
    // RFC 9110 §6.6.1: a response forwarded without a Date gets one.
    if (!has_date) field("Date", date_now());
    for (const auto& [name, value] : extra_headers_) field(name, value);
    switch (sh.mode) {
      case framing::none:
        if (!length_value.empty()) field("Content-Length", length_value);
        break;
      case framing::length:
        field("Content-Length", decimal(*p.content_length()));
        break;
      case framing::chunked: field("Transfer-Encoding", "chunked"); break;
      case framing::close: break;
    }
    if (c.client_version == 11 && !keep_client) field("Connection", "close");
    if (c.client_version == 10 && keep_client) field("Connection", "keep-alive");
    head_.append("\r\n"sv);
  }
  return sh;
}

// One upstream: a pooled connection (or a new one) and the exchange on it; a pooled connection
// found closed before any response byte is retried once on a fresh connection.
awaitable<client_session::exchange_result> client_session::attempt(upstream_pool& pool,
                                                                   client_request& req, call& c,
                                                                   bool& keep_client, bool may_fail_over) {
  auto& rec = c.rec;
  const auto& uc = pool.target().cfg;
  for (int n = 1;; ++n) {
    rec.attempts = n;
    auto conn = pool.take_idle();
    bool reused = conn != nullptr;
    if (!conn) {
      errc err = errc::ok;
      mark_upstream_start(c);
      conn = co_await connect_upstream(pool, err);
      if (!conn) {
        c.error = client_gone() ? errc::client_aborted : err;
        co_return exchange_result::done;
      }
    }
    if (client_gone()) {
      c.error = errc::client_aborted;
      conn->close();
      co_return exchange_result::done;
    }
    watch_conn_ = conn.get();
    bool keep_upstream = false;
    exchange_result r =
        conn->tls ? co_await exchange(*conn->tls, *conn, uc, reused, req, c, keep_client, keep_upstream, may_fail_over)
                  : co_await exchange(*conn->plain, *conn, uc, reused, req, c, keep_client, keep_upstream, may_fail_over);
    watch_conn_ = nullptr;
    if (keep_upstream) {
      ++conn->uses;
      pool.give_back(std::move(conn));
    } else {
      conn->close();
    }
    if (r == exchange_result::retry && n == 1) {
      c.error = errc::ok;
      continue;
    }
    co_return r == exchange_result::retry ? exchange_result::done : r;
  }
}

awaitable<std::unique_ptr<upstream_conn>> client_session::connect_upstream(upstream_pool& pool, errc& err) {
  const auto& u = pool.target().url;
  const auto& uc = pool.target().cfg;
  auto* ssl_ctx = pool.target().ssl_ctx.get();
  auto ex = pool.executor();
  beast::error_code ec;
  auto deadline = steady::now() + uc.connect_timeout;
  if (pool.endpoints_.empty()) {
    // An IP-literal host needs no resolver (whose first use starts a thread: ms of cold start).
    beast::error_code lit_ec;
    auto addr = asio::ip::make_address(u.host, lit_ec);
    if (!lit_ec) {
      pool.endpoints_.emplace_back(addr, u.port);
      pool.resolved_at_ = steady::time_point::max();
    }
  }
  if (pool.endpoints_.empty() ||
      (pool.resolved_at_ != steady::time_point::max() && steady::now() - pool.resolved_at_ > 60s)) {
    tcp::resolver resolver(ex);
    asio::steady_timer guard(ex);  // async_resolve has no deadline of its own
    guard.expires_at(deadline);
    guard.async_wait([&resolver](const beast::error_code& e) {
      if (!e) resolver.cancel();
    });
    auto results = co_await resolver.async_resolve(u.host, std::to_string(u.port), redirect_error(use_awaitable, ec));
    guard.cancel();
    if (ec || results.empty()) {
      err = ec == asio::error::operation_aborted ? errc::upstream_connect_timeout : errc::upstream_connect;
      log_line(log_level::warn, "upstream name resolution failed").str("host", u.host).str("error", ec.message());
      co_return nullptr;
    }
    pool.endpoints_.clear();
    for (const auto& e : results) pool.endpoints_.push_back(e.endpoint());
    pool.resolved_at_ = steady::now();
  }
  auto c = std::make_unique<upstream_conn>();
  // Beast reads max(512, free capacity) bytes at a time: without room reserved, a response head
  // and body that arrived together take two reads and reach the client in two writes.
  c->buffer.reserve(w_.relay_blocks.block());
  if (ssl_ctx)
    c->tls.emplace(ex, *ssl_ctx);
  else
    c->plain.emplace(ex);
  auto& sock = c->tcp();
  sock.expires_at(deadline);
  co_await sock.async_connect(pool.endpoints_, redirect_error(use_awaitable, ec));
  if (ec) {
    err = ec == beast::error::timeout ? errc::upstream_connect_timeout : errc::upstream_connect;
    log_line(log_level::warn, "upstream connect failed").str("upstream", u.origin()).str("error", ec.message());
    pool.endpoints_.clear();
    co_return nullptr;
  }
  sock.socket().set_option(tcp::no_delay(true), ec);
  sock.socket().non_blocking(true, ec);  // for send_now()
  if (c->tls) {
    beast::error_code ip_ec;
    asio::ip::make_address(u.host, ip_ec);
    // SNI carries host names only (RFC 6066 §3).
    if (ip_ec && !SSL_set_tlsext_host_name(c->tls->native_handle(), u.host.c_str())) {
      err = errc::upstream_tls;
      co_return nullptr;
    }
    if (uc.tls_verify) {
      c->tls->set_verify_mode(ssl::verify_peer);
      c->tls->set_verify_callback(ssl::host_name_verification(u.host));
    } else {
      c->tls->set_verify_mode(ssl::verify_none);
    }
    co_await c->tls->async_handshake(ssl::stream_base::client, redirect_error(use_awaitable, ec));
    if (ec) {
      err = ec == beast::error::timeout ? errc::upstream_connect_timeout : errc::upstream_tls;
      long vr = SSL_get_verify_result(c->tls->native_handle());
      log_line(log_level::warn, "upstream TLS handshake failed")
          .str("upstream", u.origin())
          .str("error", ec.message())
          .str("verify", vr == X509_V_OK ? "ok" : X509_verify_cert_error_string(vr));
      co_return nullptr;
    }
  }
  co_return c;
}

// Sends the request head and a stored upload (c.spooled) on `up`, from offset 0 on every
// attempt. Each write has the upstream's idle timeout: a large body takes as long as the link
// needs, within the call's total. A read error of the file fails the attempt as a reset would.
template <class Stream>
awaitable<void> client_session::send_spooled(Stream& up, upstream_conn& conn, const upstream_config& uc,
                                             const call& c, steady::time_point total_deadline, beast::error_code& ec) {
  auto& tcp_up = conn.tcp();
  tcp_up.expires_at(std::min(steady::now() + uc.idle_timeout, total_deadline));
  co_await asio::async_write(up, asio::buffer(up_head_), redirect_error(use_awaitable, ec));
  std::unique_ptr<char[]> chunk(new char[spool_chunk]);
  // With a splice, the file goes in two stretches with its replacement text between them.
  const std::uint64_t cut = c.spool_edit ? c.spool_edit->offset : c.spooled.size();
  const std::uint64_t resume = c.spool_edit ? c.spool_edit->offset + c.spool_edit->length : c.spooled.size();
  bool spliced = !c.spool_edit;
  for (std::uint64_t offset = 0; !ec && offset < c.spooled.size();) {
    if (!spliced && offset == cut) {
      tcp_up.expires_at(std::min(steady::now() + uc.idle_timeout, total_deadline));
      co_await asio::async_write(up, asio::buffer(c.spool_edit->text), redirect_error(use_awaitable, ec));
      offset = resume;
      spliced = true;
      continue;
    }
    const std::uint64_t until = spliced ? c.spooled.size() : cut;
    const long n = c.spooled.read_at(offset, chunk.get(), std::min<std::uint64_t>(spool_chunk, until - offset));
    if (n <= 0) {
      log_line(log_level::error, "cannot read a stored upload").str("error", n < 0 ? std::strerror(errno) : "short file");
      ec = asio::error::connection_reset;
      break;
    }
    tcp_up.expires_at(std::min(steady::now() + uc.idle_timeout, total_deadline));
    co_await asio::async_write(up, asio::buffer(chunk.get(), static_cast<std::size_t>(n)), redirect_error(use_awaitable, ec));
    offset += static_cast<std::uint64_t>(n);
  }
}

// Sends the request on `up` and relays the response to the client. Fills c (status, usage,
// error). Returns retry when a reused connection turned out closed before any response byte.
template <class Stream>
awaitable<client_session::exchange_result> client_session::exchange(Stream& up, upstream_conn& conn,
                                                                    const upstream_config& uc, bool reused,
                                                                    client_request& req, call& c,
                                                                    bool& keep_client, bool& keep_upstream,
                                                                    bool may_fail_over) {
  auto& rec = c.rec;
  auto& tcp_up = conn.tcp();
  beast::error_code ec;
  auto total_deadline = c.t0 + uc.total_timeout;
  if (!reused) {
    // connect time counts as tollgate-independent upstream time
  } else {
    mark_upstream_start(c);
  }

  if (c.spooled.active()) {
    co_await send_spooled(up, conn, uc, c, total_deadline, ec);
    tcp_up.expires_at(std::min(steady::now() + uc.first_byte_timeout, total_deadline));
  } else {
    tcp_up.expires_at(std::min(steady::now() + uc.first_byte_timeout, total_deadline));
    const std::array<asio::const_buffer, 2> request_bytes{asio::buffer(up_head_), asio::buffer(req.body())};
    std::size_t sent = 0;
    if constexpr (std::is_same_v<Stream, beast::tcp_stream>) sent = send_now(up.socket(), request_bytes);
    if (sent < up_head_.size() + req.body().size()) {
      beast::buffers_suffix<std::array<asio::const_buffer, 2>> rest(request_bytes);
      rest.consume(sent);
      co_await asio::async_write(up, rest, redirect_error(use_awaitable, ec));
    }
  }
  // An upstream may answer before it has read the whole body (a 413 for a large upload, a 401)
  // and close: the write then fails, but the answer is waiting in the receive buffer (Linux
  // delivers queued bytes before the reset). It is read like any answer, as nginx does; a
  // connection whose write failed is never reused. Nothing there: the call fails as before
  // (upstream_reset, or the stale-connection retry).
  const bool write_failed = ec == asio::error::broken_pipe || ec == asio::error::connection_reset;
  if (write_failed) ec = {};
  std::optional<upstream_parser> parser;
  auto fresh_parser = [&] {
    parser.emplace();
    parser->header_limit(256 * 1024);
    parser->body_limit(boost::none);  // relay bodies of any size; only what tollgate parses is bounded
    if (c.head_request) parser->skip(true);
  };
  fresh_parser();
  // After a head: an interim 1xx (e.g. 103 Early Hints; 100 cannot come since Expect is removed)
  // is skipped with a fresh parser. True when another head must be read.
  auto skip_interim = [&] {
    const int s = parser->get().result_int();
    if (s / 100 != 1 || s == 101) return false;
    fresh_parser();
    return true;
  };
  // Set by the drained read of the head: the next wait on this socket in this call must follow a
  // read that does not wait (an end of stream that came with the head is not announced again).
  bool check_before_wait = false;
  if constexpr (std::is_same_v<Stream, beast::tcp_stream>) {
    // The answer is awaited by a drained read (net/drained_read.hpp: no recv that fails first,
    // on this call's connection and the next one's) and parsed from the buffer where it is
    // whole; the async read below carries on only with a head not yet complete. The read size
    // is Beast's own for the same buffer.
    if (!ec && conn.buffer.size() == 0) {
      check_before_wait = true;
      const std::size_t n = co_await up.async_read_some(
          drained_buffer{conn.buffer.prepare(beast::read_size(conn.buffer, 65536))}, redirect_error(use_awaitable, ec));
      conn.buffer.commit(n);
      // A head not yet whole makes read_header try the socket without waiting, which is the
      // check a wait after a drained read needs.
      while (!ec) {
        http::read_header(up, conn.buffer, *parser, ec);
        if (ec || !skip_interim()) break;
      }
      if (ec == asio::error::would_block) ec = {};
    }
  }
  if (!ec && !parser->is_header_done()) {
    for (;;) {
      co_await http::async_read_header(up, conn.buffer, *parser, redirect_error(use_awaitable, ec));
      if (ec || !skip_interim()) break;
    }
  }
  auto& p = *parser;
  if (ec) {
    if (client_gone()) {
      c.error = errc::client_aborted;
      co_return exchange_result::done;
    }
    if (reused && is_eof_like(ec) && !p.got_some()) co_return exchange_result::retry;
    c.error = upstream_head_error(ec, total_deadline);
    log_line(log_level::debug, "upstream response head failed").str("error", ec.message());
    co_return exchange_result::done;
  }
  auto t_first = steady::now();
  rec.first_byte_ms = ms_between(c.t0, t_first);
  auto& ures = p.get();
  int status = ures.result_int();
  bool ok2xx = status / 100 == 2;
  if (may_fail_over && (status == 429 || status >= 500)) {
    // Another upstream will be tried; this answer is not relayed (its body is not read, so the
    // connection is not reused).
    c.failover_status = status;
    rec.status = status;
    co_return exchange_result::failover;
  }
  const response_shape shape = shape_response(p, c, keep_client);
  rec.status = status;

  // Metering state.
  std::optional<stream_meter> meter;
  sse_parser events;
  std::optional<inflater> infl;
  std::string decoded;
  const bool metered = ok2xx && c.meter;
  if (shape.sse && metered) meter.emplace(rec.route, c.strip && shape.edit_events);
  if (shape.compressed && shape.decodable && metered) infl.emplace();
  parse_.clear();
  // The body to parse grows in place: one allocation when its length is known (it was released
  // while the connection idled, so appends would otherwise regrow it from empty every call).
  if (!shape.sse && metered && p.content_length())
    parse_.reserve(static_cast<std::size_t>(std::min<std::uint64_t>(*p.content_length(), cfg_.max_parse_bytes)));
  bool parse_overflow = false;

  // The head goes out with the first body bytes when those are already here (one write, not
  // two); an upstream that has not started its body yet (a stream) gets its head sent at once.
  bool head_pending = true;
  bool final_written = false;
  // A write to the client in two steps: send_client() builds the gather list and sends what the
  // socket takes now, and returns true when all of it went (the usual case: no coroutine, no
  // timer); otherwise finish_client() writes the rest asynchronously under idle_timeout.
  char size_line[24];
  std::array<asio::const_buffer, 5> client_bufs{};
  std::size_t client_sent = 0;
  bool client_last = false;
  auto mark_written = [&](bool last) {
    head_pending = false;
    c.head_sent = true;
    final_written = final_written || last;
  };
  auto send_client = [&](std::string_view bytes, bool last) -> bool {
    client_bufs = {};
    std::size_t nb = 0;
    if (head_pending) client_bufs[nb++] = asio::buffer(head_);
    if (!bytes.empty()) {
      if (shape.mode == framing::chunked) {
        char* end = std::to_chars(size_line, size_line + sizeof size_line - 2, bytes.size(), 16).ptr;
        *end++ = '\r';
        *end++ = '\n';
        client_bufs[nb++] = asio::buffer(size_line, static_cast<std::size_t>(end - size_line));
        client_bufs[nb++] = asio::buffer(bytes.data(), bytes.size());
        client_bufs[nb++] = asio::buffer("\r\n", 2);
      } else {
        client_bufs[nb++] = asio::buffer(bytes.data(), bytes.size());
      }
    }
    if (last && shape.mode == framing::chunked) client_bufs[nb++] = asio::buffer("0\r\n\r\n", 5);
    if (nb == 0) return true;
    client_last = last;
    client_sent = send_now(stream_.socket(), client_bufs);
    if (client_sent < asio::buffer_size(client_bufs)) return false;
    mark_written(last);
    return true;
  };
  auto finish_client = [&]() -> awaitable<bool> {
    beast::buffers_suffix<std::array<asio::const_buffer, 5>> rest(client_bufs);
    rest.consume(client_sent);
    beast::error_code wec;
    stream_.expires_after(uc.idle_timeout);
    co_await asio::async_write(stream_, rest, redirect_error(use_awaitable, wec));
    if (wec) co_return false;
    mark_written(client_last);
    co_return true;
  };
  if (!p.is_done() && conn.buffer.size() == 0 && !send_client({}, false) && !co_await finish_client()) {
    c.error = errc::client_aborted;
    co_return exchange_result::done;
  }

  relay_lease relay_buf_(w_.relay_blocks);
  while (!p.is_done()) {
    ures.body().data = relay_buf_.data();
    ures.body().size = relay_buf_.size();
    auto now = steady::now();
    if (now >= total_deadline) {
      c.error = errc::upstream_total_timeout;
      break;
    }
    // Body bytes that came with the head (or a previous read) are parsed synchronously: no
    // timer, handler or scheduler trip. Plain TCP only: a TLS stream's sync read could not be
    // resumed by the async one. What was parsed is relayed before waiting for more.
    bool parsed = false;
    if constexpr (std::is_same_v<Stream, beast::tcp_stream>) {
      if (conn.buffer.size() > 0 || check_before_wait) {
        http::read_some(up, conn.buffer, p, ec);
        parsed = ec != asio::error::would_block || ures.body().size < relay_buf_.size();
        if (ec == asio::error::would_block) {
          ec = {};
          check_before_wait = false;  // the socket was just seen empty: waiting is safe
        }
      }
    }
    if (!parsed) {
      tcp_up.expires_at(std::min(now + uc.idle_timeout, total_deadline));
      co_await http::async_read_some(up, conn.buffer, p, redirect_error(use_awaitable, ec));
    }
    if (ec == http::error::need_buffer) ec = {};
    std::size_t n = relay_buf_.size() - ures.body().size;
    if (n > 0) {
      c.t_up_end = steady::now();
      std::string_view piece(relay_buf_.data(), n);
      std::string_view plain = piece;
      if (infl) {
        decoded.clear();
        infl->feed(piece, decoded, cfg_.max_parse_bytes);
        plain = decoded;
      }
      bool ok = true;
      if (shape.edit_events) {
        out_.clear();
        events.append(plain);
        sse_event ev;
        while (events.next(ev))
          if (meter->on_event(ev)) meter->append_stripped(ev, out_);
        ok = send_client(out_, !ec && p.is_done() && events.pending().empty());
        if (!ok) ok = co_await finish_client();
      } else {
        // Anthropic batch objects: their results_url must lead back through tollgate.
        if (c.batch_objects && !shape.compressed) relativize_results_urls(relay_buf_.data(), n);
        ok = send_client(piece, !ec && p.is_done());
        if (!ok) ok = co_await finish_client();
        if (meter) {
          if (!shape.compressed || infl) {
            events.append(plain);
            sse_event ev;
            while (events.next(ev)) meter->on_event(ev);
          }
        } else if (metered && (!shape.compressed || infl)) {
          if (parse_.size() + plain.size() <= cfg_.max_parse_bytes)
            parse_.append(plain);
          else
            parse_overflow = true;
        }
      }
      if (!ok) {
        c.error = errc::client_aborted;
        break;
      }
    }
    if (ec) {
      if (client_gone()) {
        c.error = errc::client_aborted;
      } else {
        c.error = classify_upstream_error(ec, errc::upstream_idle_timeout, total_deadline);
        if (ec != beast::error::timeout && !is_eof_like(ec)) c.error = errc::upstream_protocol;
      }
      break;
    }
  }
  if (c.t_up_end == steady::time_point{}) c.t_up_end = steady::now();

  if (c.error == errc::ok) {
    out_.clear();
    sse_event ev;
    if (shape.edit_events) {
      // An unterminated final event is still the upstream's bytes: passed on, edited as any
      // other (a usage-only chunk the client did not ask for stays hidden).
      while (events.finish(ev))
        if (meter->on_event(ev)) meter->append_stripped(ev, out_);
    } else if (meter) {
      while (events.finish(ev)) meter->on_event(ev);
    }
    if (!final_written && !send_client(out_, true) && !co_await finish_client()) c.error = errc::client_aborted;
  }
  keep_upstream = c.error == errc::ok && !write_failed && p.is_done() && p.keep_alive() && conn.buffer.size() == 0;

  // Usage and served model.
  auto& facts = c.facts;
  bool finished_background = false;
  if (meter) {
    finished_background = meter->has_usage();  // response.completed / failed / incomplete
    rec.served_model = meter->model();
    rec.provider = meter->provider();
    if (rec.upstream_request_id.empty()) rec.upstream_request_id = meter->id();
    if (meter->has_usage()) {
      rec.tokens = meter->usage();
      rec.source = usage_source::upstream;
      add_other_models(c, meter->other_models());
      if (meter->usage_provisional()) {
        // An Anthropic stream that ended before message_delta (cut, or the client left): its
        // input counts are real, its output count a placeholder; the text streamed says more.
        rec.tokens.completion = std::max(rec.tokens.completion, meter->estimated_completion_tokens());
        rec.source = usage_source::estimated;
      }
    }
    if (c.error == errc::ok && !meter->saw_done() && meter->knows_end()) c.error = errc::upstream_stream_truncated;
    // An error event (`data: {"error": ...}`) the upstream followed with [DONE]: the answer was
    // not completed, whatever its end says.
    if (c.error == errc::ok && meter->saw_error() && !meter->has_usage()) c.error = errc::upstream_stream_truncated;
    if (rec.route == route_kind::other) rec.stream = true;  // its request was not read
    if (c.error != errc::ok) rec.aborted = true;
    // A stream without usage, cut or whole (a provider that ignores include_usage): the spend is
    // estimated from the request and the text streamed, never left at $0 (counted in
    // tollgate_unmetered_requests_total all the same: the upstream did not report it).
    if (!meter->has_usage() && (c.error != errc::ok || meter->knows_end())) {
      rec.tokens.prompt = prompt_estimate(c, req);
      rec.tokens.completion = meter->estimated_completion_tokens();
      rec.tokens.tier = meter->usage().tier;  // chunks name their tier before any usage
      rec.source = usage_source::estimated;
    }
    // A background response streamed at its creation and cut before response.completed runs on
    // upstream to its end: like a non-stream create that answered `queued`, it is metered by the
    // first retrieval that sees it finished (a resumed stream, a poll), not estimated here.
    if (meter->background() && !meter->has_usage() && !meter->id().empty() && c.background_id.empty() &&
        rec.route == route_kind::responses) {
      st_.background_responses.add(meter->id(), rec.start_ms);
      rec.tokens = {};
      rec.source = usage_source::none;
    }
  } else if (metered && !c.message_batch_id.empty()) {
    // A message batch's results (JSON lines): metered once, by the first complete download.
    if (!parse_overflow && c.error == errc::ok) {
      batch_results br = extract_batch_results(parse_);
      if (br.succeeded > 0 && st_.pending_batches.take(c.message_batch_id, &c.created_ms)) {
        rec.served_model = br.by_model.front().first;
        rec.tokens = {};
        rec.tokens.tier = service_tier::batch;
        for (const auto& [m, u] : br.by_model) rec.tokens.add(u);
        rec.source = usage_source::upstream;
        c.usage_by_model = std::move(br.by_model);
      }
    }
  } else if (metered && !parse_.empty() && !parse_overflow && (c.error == errc::ok)) {
    auto rf = extract_response(rec.route, parse_);
    if (c.creates_batch && !rf.id.empty()) st_.pending_batches.add(rf.id, rec.start_ms);
    // A background response answers `queued`: its usage comes with a later retrieval.
    if (rec.route == route_kind::responses && rf.background && !rf.has_usage && !is_finished_response(rf.status))
      st_.background_responses.add(rf.id, rec.start_ms);
    if (!c.background_id.empty()) finished_background = is_finished_response(rf.status);
    if (rf.object == "batch") {
      // A batch object's usage is the batch's running total: metered once, at the batch prices,
      // by the first retrieval that sees a batch created through tollgate ended.
      const bool ended = is_finished_batch(rf.status);
      if (!(rf.has_usage && ended && !c.batch_id.empty() && st_.pending_batches.take(c.batch_id, &c.created_ms))) {
        if (ended && !c.batch_id.empty()) st_.pending_batches.take(c.batch_id);  // ended without usage
        rf.has_usage = false;
      }
      rf.usage.tier = service_tier::batch;
    }
    rec.served_model = std::move(rf.model);
    rec.provider = std::move(rf.provider);
    if (rec.upstream_request_id.empty()) rec.upstream_request_id = std::move(rf.id);
    if (rf.has_usage) {
      rec.tokens = rf.usage;
      rec.source = usage_source::upstream;
      add_other_models(c, rf.other_models);
    }
  } else if (ok2xx && c.error != errc::ok && facts.has_model) {
    rec.aborted = true;
    rec.tokens.prompt = prompt_estimate(c, req);
    rec.source = usage_source::estimated;
  }
  // DALL-E images and Sora videos: no usage in the reply; billed per image or second of video.
  if (metered && c.media != media_call::none && c.error == errc::ok && rec.source == usage_source::none &&
      !parse_.empty() && !parse_overflow) {
    const media_reply mr = extract_media(parse_);
    if (auto t = media_usage(c.media, c.media_of().media_req, mr)) {
      rec.tokens = *t;
      rec.source = usage_source::upstream;
      if (rec.served_model.empty() && !mr.model.empty()) rec.served_model = mr.model;
      // A video, for what its remixes will reserve.
      if (c.media != media_call::images && !mr.id.empty())
        st_.videos.remember(mr.id, {rec.served_model, t->media_w, t->media_h, t->video_seconds});
    }
  }
  // Speech answers with audio and no usage; a model billed per input character (tts-1) is
  // metered by the characters of the request's input, the unit its price is in. A token-billed
  // one (gpt-4o-mini-tts, which reports usage only when streamed) is estimated: the request's
  // text tokens in, and out the audio's length (from its container's headers) at
  // kSpeechAudioTokensPerSecond.
  if (metered && c.media_in && c.media_in->speech.characters > 0 && c.error == errc::ok &&
      rec.source == usage_source::none) {
    const speech_facts& speech = c.media_in->speech;
    const model_price* p = prices().resolve(c.sent_model.empty() ? rec.requested_model : c.sent_model);
    if (p && p->per_million_characters > 0) {
      rec.tokens = {};
      rec.tokens.characters = speech.characters;
      rec.source = usage_source::upstream;
    } else if (p && !parse_overflow) {
      if (const auto seconds = audio_seconds(parse_, speech.format)) {
        rec.tokens = {};
        rec.tokens.prompt = speech.text_tokens;
        rec.tokens.completion = rec.tokens.audio_out =
            static_cast<std::int64_t>(std::ceil(*seconds * kSpeechAudioTokensPerSecond - 1e-6));  // sums of frames
        rec.source = usage_source::estimated;
      }
    }
  }
  if (c.error != errc::ok) rec.aborted = true;
  // A pending background response is metered by the first retrieval that sees it finished;
  // any other retrieval (still running, or a second look) records no usage.
  if (!c.background_id.empty() &&
      !(finished_background && st_.background_responses.take(c.background_id, &c.created_ms))) {
    rec.tokens = {};
    rec.source = usage_source::none;
  }
  co_return exchange_result::done;
}

// ---------------------------------------------------------------------------------------------
// Client abort detection. A session with a call in flight is on its worker's watch list; every
// 200 ms the worker peeks at each watched client socket (recv MSG_PEEK|MSG_DONTWAIT): 0 bytes (a
// FIN) or an error means the client is gone, and its upstream call is cancelled (nginx's 499).
// One sweep for all calls instead of an async wait per call, which cost an epoll_ctl, an
// allocation and a cancellation on every call; a call shorter than the sweep period costs two
// vector operations.

// A read deadline that cancels the read instead of closing the socket. The handler keeps the
// session alive and acts only if its generation is still the current read's: a timer that fired
// just as the read completed cannot cancel the next operation.
void client_session::arm_read_deadline(steady::duration d) {
  const auto gen = ++read_gen_;
  read_timed_out_ = false;
  read_timer_.expires_after(d);
  read_timer_.async_wait([this, self = shared_from_this(), gen](const beast::error_code& ec) {
    if (ec || gen != read_gen_) return;
    read_timed_out_ = true;
    beast::error_code ignored;
    stream_.socket().cancel(ignored);
  });
}

void client_session::disarm_read_deadline() {
  ++read_gen_;
  read_timer_.cancel();
}

void client_session::start_watch() {
  gone_ = false;
  watch_index_ = w_.watched.size();
  w_.watched.push_back(this);
  if (!w_.sweep_armed) arm_sweep(w_);
}

void client_session::stop_watch() {
  if (watch_index_ == not_watched) return;
  auto& v = w_.watched;
  v[watch_index_] = v.back();
  v[watch_index_]->watch_index_ = watch_index_;
  v.pop_back();
  watch_index_ = not_watched;
  watch_conn_ = nullptr;
}

void client_session::arm_sweep(worker& w) {
  w.sweep_armed = true;
  w.sweep_timer.expires_after(200ms);
  w.sweep_timer.async_wait([&w](const beast::error_code& ec) {
    w.sweep_armed = false;
    if (ec) return;
    // Cancelling an upstream call only queues its completion: the list does not change here.
    for (client_session* s : w.watched) {
      if (s->gone_) continue;
      char ch;
      const ssize_t n = ::recv(s->stream_.socket().native_handle(), &ch, 1, MSG_PEEK | MSG_DONTWAIT);
      if (n > 0 || (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))) continue;
      s->gone_ = true;
      if (s->watch_conn_) s->watch_conn_->tcp().cancel();
    }
    if (!w.watched.empty()) arm_sweep(w);
  });
}

// ---------------------------------------------------------------------------------------------
// WebSocket sessions: the OpenAI Realtime API (the SDK opens wss://…/v1/realtime, so tollgate
// sits behind a TLS-terminating load balancer that forwards the upgrade) and the Responses API's
// WebSocket mode (GET /v1/responses; the SDK dials ws:// for an http:// base URL).

// The opening handshake goes to the first upstream that takes a connection, on a fresh one that
// is never pooled, with the upstream's credentials. Its answer comes back; after a 101 the bytes
// of both directions are relayed untouched until either side closes, or until
// upstream.timeouts.total after the request. One ledger row per session: route other (responses
// for the Responses API), status 101, latency = the session's length, usage and cost from the
// upstream's response.done (Realtime) or response.completed (Responses) events, read as they
// pass (below). A routing rule's rewrite replaces the query's `model`.
// Why one row per session and not per response: a Responses socket may run several responses at
// once (`stream_id` lanes), and a Realtime response has no request of its own; the budgets see
// each response as it completes all the same.
awaitable<void> client_session::tunnel(const std::vector<candidate>& tries, client_request& req,
                                       const route_decision& rd, const target_parts& tp, call& c) {
  auto& rec = c.rec;
  const std::string path(tp.path);
  c.ws_sideband = is_live_sideband_of_metered(path);
  const std::string query = c.sent_model.empty() ? std::string(tp.query) : with_query_param(tp.query, "model", c.sent_model);
  for (std::size_t k = 0; k < tries.size() && !c.head_sent; ++k) {
    auto& t = *tries[k].t;
    const bool probe = tries[k].probe;
    write_upstream_head(t, req, c, rd, path, query);
    rec.upstream = t.cfg.name;
    rec.attempts = static_cast<int>(k) + 1;
    c.price_multiplier = t.cfg.price_multiplier;
    c.error = errc::ok;
    mark_upstream_start(c);
    auto conn = co_await connect_upstream(*w_.pools[t.index], c.error);
    if (!conn) {
      t.breaker.on_failure(steady::now(), probe);  // nothing was sent: the next upstream may
      continue;
    }
    t.inflight.fetch_add(1, std::memory_order_relaxed);
    watch_conn_ = conn.get();
    if (conn->tls)
      co_await tunnel_on(*conn->tls, *conn, t.cfg, c);
    else
      co_await tunnel_on(*conn->plain, *conn, t.cfg, c);
    watch_conn_ = nullptr;
    conn->close();
    t.inflight.fetch_sub(1, std::memory_order_relaxed);
    if (!c.head_sent || rec.status >= 500)
      t.breaker.on_failure(steady::now(), probe);
    else
      t.breaker.on_success(probe);
    break;  // the handshake went out: never twice
  }
  if (!c.head_sent) {
    if (c.error == errc::ok) c.error = errc::upstream_reset;
    st_.metrics_->upstream_error(error_name(c.error));
    rec.status = http_status(c.error);
    co_await send_error(c.error, {}, false, rec.request_id);
  }
}

template <class Stream>
awaitable<void> client_session::tunnel_on(Stream& up, upstream_conn& conn, const upstream_config& uc, call& c) {
  auto& rec = c.rec;
  beast::error_code ec;
  const auto deadline = c.t0 + uc.total_timeout;
  conn.tcp().expires_at(std::min(steady::now() + uc.first_byte_timeout, deadline));
  co_await asio::async_write(up, asio::buffer(up_head_), redirect_error(use_awaitable, ec));
  // A 101 has no body; a refusal (401, 400, 5xx) brings a short one, relayed whole.
  http::response_parser<http::string_body> p;
  p.header_limit(64 * 1024);
  p.body_limit(1024 * 1024);
  if (!ec) co_await http::async_read(up, conn.buffer, p, redirect_error(use_awaitable, ec));
  if (ec) {
    c.error = upstream_head_error(ec, deadline);
    co_return;
  }
  rec.first_byte_ms = ms_between(c.t0, steady::now());
  const auto& res = p.get();
  rec.status = res.result_int();
  const bool upgraded = rec.status == 101;
  head_.clear();
  auto field = [this](std::string_view name, std::string_view value) {
    head_.append(name).append(": "sv).append(value).append("\r\n"sv);
  };
  head_.append("HTTP/1.1 "sv).append(std::to_string(rec.status)).append(" "sv).append(res.reason()).append("\r\n"sv);
  for (const auto& f : res) {
    const std::string_view name(f.name_string().data(), f.name_string().size());
    if (iequals(name, "x-request-id")) {
      rec.upstream_request_id = std::string(f.value());
      field("x-upstream-request-id", f.value());
    } else if ((is_safe_response_header(name) && f.name() != http::field::content_length) ||
               (upgraded && name.size() > 14 && iequals(name.substr(0, 14), "sec-websocket-"))) {
      field(name, f.value());
    }
  }
  field("x-request-id", rec.request_id);
  if (upgraded) {
    field("Connection", "Upgrade");
    field("Upgrade", "websocket");
  } else {
    field("Content-Length", std::to_string(res.body().size()));
    field("Connection", "close");
  }
  head_.append("\r\n"sv);
  if (!upgraded) head_.append(res.body());
  stream_.expires_after(local_write_timeout);
  co_await asio::async_write(stream_, asio::buffer(head_), redirect_error(use_awaitable, ec));
  c.head_sent = true;
  if (ec) {
    c.error = errc::client_aborted;
    co_return;
  }
  if (!upgraded) co_return;

  // The upstream's frames are read as they pass (the bytes go on untouched) for the Realtime
  // API's usage events: the session's row is priced from them, per model, when it ends.
  realtime_meter meter(c.sent_model.empty() ? rec.requested_model : c.sent_model);
  // A usage event larger than server.max_parse_bytes is not metered, as a POST's body would not
  // be: a Realtime response.done is a few KB, but a Responses API response.completed holds the
  // whole response (an image_generation call's base64 images are megabytes).
  // A Live session's sideband socket (/v1/live/sessions/{id}/attach) mirrors a session that is
  // metered on its own socket: it is relayed, and its row carries no usage.
  ws_message_reader reader(c.ws_sideband ? &realtime_meter::wanted_none : &realtime_meter::wanted, cfg_.max_parse_bytes);
  std::vector<std::string> events;
  bool live_registered = false;
  auto read_frames = [this, &meter, &reader, &events, &live_registered](std::string_view bytes) {
    if (reader.failed()) return;
    reader.feed(bytes, events);
    for (const auto& e : events) meter.on_message(e);
    events.clear();
    if (!live_registered && !meter.live_session_id().empty()) {  // its sidebands are not metered again
      st_.live_sessions.add(meter.live_session_id());
      live_registered = true;
    }
  };
  // A Responses WebSocket's handshake names no model: the row's requested_model is the first
  // that a response.create names, read from the client's frames until one does.
  ws_message_reader requests(&realtime_meter::wanted_request, cfg_.max_parse_bytes);
  bool want_model = rec.requested_model.empty() && rec.route == route_kind::responses && !c.ws_sideband;
  auto read_requests = [&rec, &requests, &events, &want_model](std::string_view bytes) {
    requests.feed(bytes, events);
    for (const auto& e : events)
      if (rec.requested_model.empty()) rec.requested_model = realtime_meter::requested_model(e);
    events.clear();
    want_model = rec.requested_model.empty() && !requests.failed();
  };
  if (want_model && buffer_.size() > 0) {
    const auto b = buffer_.data();
    read_requests(std::string_view(static_cast<const char*>(b.data()), b.size()));
  }
  // Bytes either peer sent right behind the handshake were read with it: they go first.
  if (conn.buffer.size() > 0) {
    const auto b = conn.buffer.data();  // a flat_buffer: one piece
    read_frames(std::string_view(static_cast<const char*>(b.data()), b.size()));
    co_await asio::async_write(stream_, conn.buffer.data(), redirect_error(use_awaitable, ec));
  }
  conn.buffer.consume(conn.buffer.size());
  if (!ec && buffer_.size() > 0) co_await asio::async_write(up, buffer_.data(), redirect_error(use_awaitable, ec));
  buffer_.consume(buffer_.size());
  stream_.expires_at(deadline);
  conn.tcp().expires_at(deadline);
  // One direction ending (a close, a reset, the deadline) ends the session: shutting both
  // sockets down wakes the other direction's pending read.
  // Each response a session completes is charged to the budgets at once (a session may run for
  // many minutes); when a hard budget it counts in is spent, the session ends: the client gets an
  // `error` event and a close frame (1008) at the next message boundary, the upstream's socket is
  // shut. The row then carries error_kind budget_exceeded and the whole session's cost.
  // The row so far, kept for a crash (open_sessions.hpp): now, and after each usage event. Its
  // cost is what the budgets are charged (over_budget), computed once per event.
  std::size_t saved_events = 0;
  cost_result session_cost{};
  auto save_row = [&] {
    usage_record row = rec;
    std::vector<std::pair<std::string, token_usage>> by_model;
    add_session_usage(meter, row, by_model);
    session_cost = by_model.empty() ? cost_result{} : compute_cost(prices(), by_model, c.price_multiplier, rec.start_ms);
    row.priced = session_cost.priced;
    row.cost_usd = session_cost.usd;
    if (session_cost.price) row.price_model = session_cost.price->name;
    row.latency_ms = ms_between(c.t0, steady::now());
    row.aborted = true;
    row.error_kind = "tollgate_restart";
    st_.realtime_rows.set({row.request_id, row.start_ms, encode_usage_record(row)});
    saved_events = meter.events();
  };
  std::size_t charged_events = 0;
  double charged_usd = 0;
  auto over_budget = [&]() -> bool {
    if (st_.policy == nullptr || c.ticket == 0 || saved_events == charged_events) return false;
    charged_events = saved_events;
    const double delta = session_cost.usd - charged_usd;
    charged_usd = session_cost.usd;
    return st_.policy->charge(c.ticket, delta, session_cost.price ? std::string_view(session_cost.price->name) : std::string_view(),
                              unix_ms_now());
  };
  save_row();
  // However the tunnel ends (an exception included), the session leaves the set: its own row is
  // written by finish_call.
  struct forget_row {
    open_sessions& set;
    const std::string& id;
    ~forget_row() { set.erase(id); }
  } forget{st_.realtime_rows, rec.request_id};
  bool client_side_done = false;
  asio::steady_timer closing(stream_.get_executor());
  // Ends the session from tollgate's side: the upstream's socket closes at once; `frames` (ending
  // in a close frame) go to the client when the bytes so far end a message (else its connection
  // just ends), and its answering close frame (RFC 6455 §5.5.1) is waited for, up to 5 s, before
  // the connection goes: only the sending side is shut meanwhile, so the answer is not refused.
  auto close_client = [&](std::string frames) -> awaitable<void> {
    beast::error_code ignored;
    conn.tcp().socket().shutdown(tcp::socket::shutdown_both, ignored);
    if (!reader.between_messages()) co_return;
    co_await asio::async_write(stream_, asio::buffer(frames), redirect_error(use_awaitable, ignored));
    stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
    if (client_side_done) co_return;
    closing.expires_after(5s);
    co_await closing.async_wait(redirect_error(use_awaitable, ignored));
  };
  auto close_for_budget = [&]() -> awaitable<void> {
    c.error = errc::budget_exceeded;
    // The Realtime API's error event, or the Responses API's (WebSocket mode: with the HTTP status
    // a POST would have had).
    constexpr std::string_view realtime_event =
        R"({"type":"error","event_id":"event_tollgate_budget","error":{"type":"invalid_request_error",)"
        R"("code":"budget_exceeded","message":"A hard budget this session counts in is spent: tollgate )"
        R"(closed the session.","param":null,"event_id":null}})";
    constexpr std::string_view responses_event =
        R"({"type":"error","status":429,"error":{"type":"budget_exceeded",)"
        R"("code":"budget_exceeded","message":"A hard budget this session counts in is spent: tollgate )"
        R"(closed the session.","param":null}})";
    co_await close_client(ws_server_frame(1, rec.route == route_kind::responses ? responses_event : realtime_event) +
                          ws_close_frame(1008, "budget exceeded"));
  };
  // A drain (close_if_idle) ends the session between responses with 1001 "going away".
  tunnel_ctl ctl{&reader, &meter, &conn};
  tunnel_ = &ctl;
  auto go_away = [&]() -> awaitable<void> { co_await close_client(ws_close_frame(1001, "tollgate is shutting down")); };
  auto relay = [this, &conn, &read_frames, &read_requests, &want_model, &over_budget, &close_for_budget, &go_away, &ctl,
                &client_side_done, &closing, &save_row, &saved_events, &meter](auto& from, auto& to,
                                                                           bool from_upstream) -> awaitable<void> {
    relay_lease buf(w_.relay_blocks);
    beast::error_code rec_ec, wec;
    for (;;) {
      const std::size_t n =
          co_await from.async_read_some(asio::buffer(buf.data(), buf.size()), redirect_error(use_awaitable, rec_ec));
      if (n > 0) co_await asio::async_write(to, asio::buffer(buf.data(), n), redirect_error(use_awaitable, wec));
      if (n > 0 && !from_upstream && want_model) read_requests(std::string_view(buf.data(), n));
      if (n > 0 && from_upstream) {
        read_frames(std::string_view(buf.data(), n));
        if (meter.events() != saved_events) save_row();
        if (!wec && over_budget()) {
          co_await close_for_budget();
          break;
        }
        if (!wec && ctl.going_away && ctl.quiet()) {  // draining: the response in flight has ended
          co_await go_away();
          break;
        }
      }
      if (rec_ec || wec) {
        // A drain shut the upstream's socket between responses (close_if_idle): say why.
        if (from_upstream && !wec && ctl.shut) co_await go_away();
        break;
      }
    }
    if (!from_upstream) {
      client_side_done = true;
      closing.cancel();
    }
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
    conn.tcp().socket().shutdown(tcp::socket::shutdown_both, ignored);
  };
  using namespace asio::experimental::awaitable_operators;
  co_await (relay(stream_, up, false) && relay(up, stream_, true));
  tunnel_ = nullptr;
  if (steady::now() + 5ms >= deadline) c.error = errc::upstream_total_timeout;
  add_session_usage(meter, rec, c.usage_by_model);
  if (reader.failed() || reader.oversized() > 0 || reader.compressed() > 0)
    log_line(log_level::warn, "realtime session: some upstream messages could not be metered")
        .str("request_id", rec.request_id)
        .boolean("protocol_error", reader.failed())
        .integer("oversized", static_cast<std::int64_t>(reader.oversized()))
        .integer("compressed", static_cast<std::int64_t>(reader.compressed()));
}

// A Live session's sideband socket (/v1/live/sessions/{id}/attach) on a session whose own
// socket passed through this tollgate (so its usage is metered there).
bool client_session::is_live_sideband_of_metered(std::string_view path) const {
  constexpr std::string_view prefix = "/v1/live/sessions/";
  if (path.ends_with('/')) path.remove_suffix(1);
  if (!path.starts_with(prefix) || !path.ends_with("/attach")) return false;
  const std::string_view id = path.substr(prefix.size(), path.size() - prefix.size() - 7);
  return !id.empty() && id.find('/') == std::string_view::npos && st_.live_sessions.contains(id);
}

// A Realtime session's usage so far into its row: the model its session names, the tokens summed
// over every model (the row's service_tier: the one its responses all report, none when they
// differ), and per model for pricing.
void client_session::add_session_usage(const realtime_meter& meter, usage_record& rec,
                                       std::vector<std::pair<std::string, token_usage>>& by_model) {
  if (!meter.model().empty()) rec.served_model = meter.model();
  if (!meter.has_usage()) return;
  by_model = meter.by_model();
  rec.tokens = {};
  for (const auto& [m, u] : by_model) rec.tokens.add(u);
  const auto tier = by_model.front().second.tier;
  if (std::all_of(by_model.begin(), by_model.end(), [tier](const auto& e) { return e.second.tier == tier; }))
    rec.tokens.tier = tier;
  rec.source = usage_source::upstream;
}

// A reply whose usage bills other models besides its own (an Anthropic message's advisor
// sub-inferences): the call is priced per model, its own usage at the model it would be priced
// at alone, and the row's tokens are the sums (as a Realtime session's).
void client_session::add_other_models(call& c, const std::vector<std::pair<std::string, token_usage>>& others) {
  if (others.empty()) return;
  auto& rec = c.rec;
  const std::string& fallback = c.sent_model.empty() ? rec.requested_model : c.sent_model;
  c.usage_by_model.clear();
  c.usage_by_model.emplace_back(rec.served_model.empty() ? fallback : rec.served_model, rec.tokens);
  for (const auto& [m, u] : others) {
    c.usage_by_model.emplace_back(m, u);
    rec.tokens.add(u);
  }
}

// The per-token prices a hard budget holds a model the table lacks at: the bounds of what relays
// charged for it (stated_rates), each capped by the table's dearest price, or the table's dearest
// prices while nothing is learned (+inf: neither exists, nothing to reserve at).
stated_rates::rates client_session::stated_reserve_rates(std::string_view model) const {
  const auto [top_in, top_out] = prices().priciest_tokens();
  return stated_rates::reserve_rates(st_.stated.bound(model), top_in, top_out);
}

// A model the price table lacks, sent only to upstreams that state each call's cost (OpenRouter,
// Perplexity, a LiteLLM proxy's whole replies: each known or seen doing so, and its reported_cost
// not `ignore`), on an API whose usage tollgate reads that cost from (chat, completions, Responses,
// embeddings), or, for Anthropic's Messages API, whose usage carries none, a whole reply through
// an upstream that states it in a header (LiteLLM's), can be held by a hard budget: its call is
// settled at the stated cost, and its worst case is reserved at stated_reserve_rates(). No
// price_multiplier: the stated cost is the relay's own bill.
// False (refused under a hard budget, as unpriced): an upstream not known to state this call's
// cost, another API, or nothing at all to reserve at.
bool client_session::reserve_stated(const route_plan& plan, route_kind route, bool stream, std::string_view model,
                                    const token_usage& worst, double& reserve_usd) const {
  const bool messages = route == route_kind::messages;
  if (model.empty() || (!messages && route != route_kind::chat_completions && route != route_kind::completions &&
                         route != route_kind::responses && route != route_kind::embeddings))
    return false;
  for (auto i : plan.order) {
    const upstream_config& u = st_.upstreams[i]->cfg;
    if (u.reported_cost == reported_cost_use::ignore || !st_.stated.states_costs(u.name, stream, messages)) return false;
  }
  const auto usd = stated_reserve_rates(model).cost(worst.prompt, worst.completion);
  if (!usd) return false;
  reserve_usd = *usd;
  return true;
}

// ---------------------------------------------------------------------------------------------
// Completion: price, ledger, metrics, log line.

void client_session::finish_call(call& c) {
  auto& rec = c.rec;
  auto end = steady::now();
  rec.latency_ms = ms_between(c.t0, end);
  if (c.error != errc::ok) rec.error_kind = std::string(error_name(c.error));
  // A client that left before its answer (499) aborted the call as much as one that left mid-stream.
  if (c.error == errc::client_aborted) rec.aborted = true;
  // The served model prices the call; an upstream that answers with an id the table does not
  // know (a private snapshot name, say), or no id at all (images, audio), falls back to the
  // model sent (a routing rule's rewrite), then to the requested one.
  const std::string& fallback = c.sent_model.empty() ? rec.requested_model : c.sent_model;
  const std::string& model = rec.served_model.empty() ? fallback : rec.served_model;
  // Prices in effect when the call started, or when the object it meters was created (a batch or
  // background response created through tollgate and metered by a later retrieval).
  const std::int64_t priced_at = c.created_ms >= 0 ? c.created_ms : rec.start_ms;
  if (!c.usage_by_model.empty()) {
    // A message batch's results (each model's requests at its batch prices), a Realtime session.
    const auto cost = compute_cost(prices(), c.usage_by_model, c.price_multiplier, priced_at);
    rec.priced = cost.priced;
    rec.cost_usd = cost.usd;
    if (cost.price) rec.price_model = cost.price->name;
    if (!rec.priced) st_.metrics_->unpriced_call();
  } else if (rec.source != usage_source::none) {
    // Each candidate name resolved once: the first entry that prices the call bills it. A call no
    // response put in a tier, made outside that entry's peak hours (DeepSeek's off-peak half
    // price), is billed at its off_peak tier, and the ledger's service_tier says so.
    cost_result cost{};
    const bool untiered = rec.tokens.tier == service_tier::none || rec.tokens.tier == service_tier::standard;
    const std::string* tried = nullptr;
    for (const std::string* name : std::initializer_list<const std::string*>{&model, &fallback, &rec.requested_model}) {
      if (name == tried || name->empty()) continue;
      tried = name;
      const model_price* p = prices().resolve_at(*name, priced_at);
      if (p == nullptr) continue;
      token_usage u = rec.tokens;
      if (untiered && off_peak_at(*p, priced_at)) u.tier = service_tier::off_peak;
      cost = compute_cost(*p, u, c.price_multiplier);
      if (cost.priced) {
        rec.tokens.tier = u.tier;
        break;
      }
    }
    // The cost the upstream states (OpenRouter's and Perplexity's usage, a LiteLLM proxy's
    // header), as the upstream's reported_cost says: for a call the table does not price (its
    // row keeps price_model empty), or for every call (prefer: the row keeps the entry that would
    // have priced it). It is the relay's own bill, so price_multiplier does not apply.
    const double reported = rec.tokens.reported_usd >= 0 ? rec.tokens.reported_usd : c.header_cost_usd;
    if (reported >= 0 && rec.source == usage_source::upstream && c.reported_cost != reported_cost_use::ignore) {
      // What the relay charged teaches the bounds a hard budget reserves its unpriced models at.
      const bool in_usage = rec.tokens.reported_usd >= 0;
      if (cost.price == nullptr)
        st_.stated.observe(rec.upstream, in_usage, fallback, rec.tokens.prompt - rec.tokens.cached,
                           rec.tokens.completion, reported, rec.provider);
      else
        st_.stated.mark_upstream(rec.upstream, in_usage);
      if (c.reported_cost == reported_cost_use::prefer || !cost.priced) {
        cost.priced = true;
        cost.usd = reported;
      }
    } else if (c.stated_reserve && !cost.priced) {
      // A hard budget admitted this unpriced model for the cost its relay would state, and none
      // came (a stream the client left before its usage chunk, tokens estimated): it is priced at
      // the reservation rates (the bounds as they stand when it ends, still upper bounds of what
      // the relay charges), so leaving early cannot get a call past the budget.
      if (const auto usd = stated_reserve_rates(fallback).cost(rec.tokens.prompt - rec.tokens.cached, rec.tokens.completion)) {
        cost.priced = true;
        cost.usd = *usd;
      }
    }
    rec.priced = cost.priced;
    rec.cost_usd = cost.usd;
    if (cost.price) {
      rec.price_model = cost.price->name;
    } else if (!cost.priced) {
      st_.metrics_->unpriced_call();
      static std::mutex warned_mu;
      static std::set<std::string, std::less<>> warned;
      std::lock_guard lock(warned_mu);
      const bool media = rec.tokens.images > 0 || rec.tokens.video_seconds > 0;
      const std::string size = std::to_string(rec.tokens.media_w) + "x" + std::to_string(rec.tokens.media_h) +
                               (rec.tokens.media_hd ? " hd" : "");
      if (warned.size() < 1000 && warned.insert(media ? model + " " + size : model).second) {
        if (media && prices().resolve(model))  // an image or video size its entry does not price
          log_line(log_level::warn, "model has no price for this output: calls are ledgered with cost 0 and priced=false")
              .str("model", model)
              .str("output", size);
        else
          log_line(log_level::warn, "model has no price: calls are ledgered with cost 0 and priced=false")
              .str("model", model);
      }
    }
  } else if (auto* price = prices().resolve(model)) {
    rec.price_model = price->name;
    rec.priced = true;  // a refused or failed call of a priced model is not an unpriced one
  }
  double overhead = -1;
  if (c.t_up_start != steady::time_point{} && c.t_up_end != steady::time_point{})
    overhead = std::chrono::duration<double>((c.t_up_start - c.t0) + (end - c.t_up_end)).count();

  if (c.ticket != 0)
    st_.policy->settle(c.ticket, rec.cost_usd, rec.tokens.total(), rec.price_model, unix_ms_now(), rec.start_ms);
  st_.metrics_->record_call(rec, overhead);
  if (log_enabled(log_level::info)) {
    log_line(log_level::info, "call")
        .str("request_id", rec.request_id)
        .str("route", to_string(rec.route))
        .str("model", model)
        .integer("status", rec.status)
        .boolean("stream", rec.stream)
        .boolean("aborted", rec.aborted)
        .integer("prompt_tokens", rec.tokens.prompt)
        .integer("completion_tokens", rec.tokens.completion)
        .integer("cached_tokens", rec.tokens.cached)
        .integer("reasoning_tokens", rec.tokens.reasoning)
        .str("usage_source", to_string(rec.source))
        .num("cost_usd", rec.cost_usd)
        .num("latency_ms", rec.latency_ms)
        .num("first_byte_ms", rec.first_byte_ms)
        .str("error", rec.error_kind)
        .integer("attempts", rec.attempts);
  }
  st_.ledger_->submit(std::move(rec));
  st_.inflight.fetch_sub(1, std::memory_order_relaxed);
  st_.metrics_->inflight.fetch_sub(1, std::memory_order_relaxed);
}

// ---------------------------------------------------------------------------------------------

void start_client_session(worker& w, tcp::socket socket) {
  beast::error_code ec;
  socket.set_option(tcp::no_delay(true), ec);
  auto s = std::make_shared<client_session>(w, std::move(socket));
  // Remember it for shutdown; forget ended sessions now and then.
  if (++w.session_count % 256 == 0)
    w.sessions.remove_if([](const std::weak_ptr<client_session>& p) { return p.expired(); });
  w.sessions.push_back(s);
  s->begin();
}

void close_idle_sessions(worker& w) {
  for (auto& wp : w.sessions)
    if (auto s = wp.lock()) s->close_if_idle();
}

void abort_all_sessions(worker& w) {
  for (auto& wp : w.sessions)
    if (auto s = wp.lock()) s->abort();
}

}  // namespace tollgate
