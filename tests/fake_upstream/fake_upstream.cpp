// The fake upstream's sockets: one acceptor thread plus one thread per connection running
// synchronous Beast I/O; it carries out the replies and faults that replies.cpp decides.
#include "fake_upstream.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <zlib.h>

#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/websocket.hpp>
#include <boost/beast/websocket/ssl.hpp>
#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <list>
#include <mutex>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <thread>

#include "replies.hpp"

namespace fake {

namespace net = boost::asio;
namespace http = boost::beast::http;
namespace beast = boost::beast;
namespace ssl = boost::asio::ssl;
using tcp = net::ip::tcp;
using std::chrono::milliseconds;
using detail::content_coding;
using detail::fault;

std::string recorded_request::header(std::string_view name) const {
  for (const auto& [n, v] : headers)
    if (beast::iequals(n, name)) return v;
  return {};
}

namespace {

constexpr std::size_t max_request_body_bytes = 256u << 20;
constexpr std::size_t max_request_header_bytes = 64u << 10;
constexpr std::chrono::seconds stall_limit{120};
constexpr std::string_view garbage_bytes = "HELLO THIS IS NOT HTTP\r\n\r\n";
// An invalid chunk-size line ("zz") where a hex size must be.
constexpr std::string_view bad_chunked_bytes = "zz\r\nhello\r\n0\r\n\r\n";

// gzip (RFC 1952) or zlib-wrapped deflate (RFC 1950) with a sync flush per piece, so every SSE
// event decodes as soon as it arrives.
class body_encoder {
 public:
  explicit body_encoder(content_coding c) : coding_(c) {
    if (c == content_coding::identity) return;
    const int window_bits = c == content_coding::gzip ? 15 + 16 : 15;
    if (deflateInit2(&z_, Z_DEFAULT_COMPRESSION, Z_DEFLATED, window_bits, 8, Z_DEFAULT_STRATEGY) != Z_OK)
      throw std::runtime_error("deflateInit2 failed");
  }
  ~body_encoder() {
    if (coding_ != content_coding::identity) deflateEnd(&z_);
  }
  body_encoder(const body_encoder&) = delete;
  body_encoder& operator=(const body_encoder&) = delete;

  std::string push(std::string_view in, bool finish) {
    if (coding_ == content_coding::identity) return std::string(in);
    std::string out;
    z_.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
    z_.avail_in = static_cast<uInt>(in.size());
    char buf[16384];
    do {
      z_.next_out = reinterpret_cast<Bytef*>(buf);
      z_.avail_out = sizeof buf;
      deflate(&z_, finish ? Z_FINISH : Z_SYNC_FLUSH);
      out.append(buf, sizeof buf - z_.avail_out);
    } while (z_.avail_out == 0);
    return out;
  }

 private:
  content_coding coding_;
  z_stream z_{};
};

}  // namespace

struct server::impl {
  struct connection {
    std::thread thread;
    int fd = -1;  // -1 once closed, so stop() never shuts down a reused descriptor
    bool done = false;
  };

  explicit impl(options o);
  ~impl();

  void do_accept();
  void start_connection(tcp::socket s);
  void reap_finished();
  void run_connection(connection& c, tcp::socket sock);
  template <class Stream>
  void serve(connection& c, Stream& stream, tcp::socket& raw);
  template <class Stream>
  void realtime_session(Stream& stream, const http::request<http::string_body>& req, std::uint64_t number);
  template <class Stream>
  void live_session(Stream& stream, const http::request<http::string_body>& req, const detail::knobs& k,
                    std::uint64_t number, bool sideband);
  template <class Stream>
  void responses_session(Stream& stream, const http::request<http::string_body>& req, const detail::knobs& k,
                         std::uint64_t number);
  template <class Stream>
  bool respond(connection& c, Stream& stream, tcp::socket& raw, const detail::knobs& k, detail::reply& r,
               std::uint64_t number, bool keep_alive);
  template <class Stream>
  bool send_body(connection& c, Stream& stream, tcp::socket& raw, const detail::knobs& k, const detail::reply& r,
                 std::uint64_t number, bool keep_alive);
  template <class Stream>
  bool send_stream(connection& c, Stream& stream, tcp::socket& raw, const detail::knobs& k,
                   const detail::reply& r, std::uint64_t number, bool keep_alive);
  http::response<http::empty_body> make_head(const detail::reply& r, const detail::knobs& k, std::uint64_t number,
                                             bool keep_alive) const;
  void close_socket(connection& c, tcp::socket& raw, bool reset);
  void stall(tcp::socket& raw);
  bool pause(milliseconds d);  // false when the server is stopping
  std::uint64_t record(const recorded_request& r);

  options opts;
  std::optional<ssl::context> tls;
  net::io_context ioc;  // runs only the acceptor; connections use blocking calls on their own threads
  tcp::acceptor acceptor{ioc};
  uint16_t port = 0;
  std::thread accept_thread;

  mutable std::mutex mutex;  // guards everything below
  std::condition_variable stop_signal;
  bool stopping = false;
  std::list<connection> connections;
  std::vector<recorded_request> log;
  std::size_t count = 0;
  std::uint64_t next_number = 0;
};

server::impl::impl(options o) : opts(std::move(o)) {
  if (opts.tls) {
    tls.emplace(ssl::context::tls_server);
    tls->set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 | ssl::context::no_sslv3);
    tls->use_certificate_chain(net::buffer(opts.tls->cert_pem));
    tls->use_private_key(net::buffer(opts.tls->key_pem), ssl::context::pem);
  }
  const tcp::endpoint ep = *tcp::resolver(ioc).resolve(opts.host, std::to_string(opts.port)).begin();
  acceptor.open(ep.protocol());
  acceptor.set_option(net::socket_base::reuse_address(true));
  acceptor.bind(ep);
  acceptor.listen(net::socket_base::max_listen_connections);
  port = acceptor.local_endpoint().port();
  do_accept();
  accept_thread = std::thread([this] { ioc.run(); });
}

server::impl::~impl() {
  {
    std::lock_guard lk(mutex);
    stopping = true;
    // Wakes every blocking read, write, handshake and poll on the connection threads.
    for (auto& c : connections)
      if (c.fd >= 0) ::shutdown(c.fd, SHUT_RDWR);
  }
  stop_signal.notify_all();
  ioc.stop();
  if (accept_thread.joinable()) accept_thread.join();
  for (auto& c : connections) c.thread.join();  // the list no longer changes: the acceptor is gone
}

void server::impl::do_accept() {
  acceptor.async_accept([this](beast::error_code ec, tcp::socket s) {
    if (ec == net::error::operation_aborted) return;
    reap_finished();
    if (!ec)
      start_connection(std::move(s));
    else
      std::this_thread::sleep_for(milliseconds{10});  // EMFILE and friends: back off, don't spin
    do_accept();
  });
}

void server::impl::start_connection(tcp::socket s) {
  beast::error_code ec;
  s.set_option(tcp::no_delay(true), ec);  // each SSE event must leave at once, not wait for an ACK
  std::lock_guard lk(mutex);
  if (stopping) return;
  connection& c = connections.emplace_back();
  c.fd = s.native_handle();
  try {
    c.thread = std::thread([this, &c, s = std::move(s)]() mutable { run_connection(c, std::move(s)); });
  } catch (const std::system_error&) {
    connections.pop_back();  // out of threads: the socket closes with the lambda
  }
}

void server::impl::reap_finished() {
  std::lock_guard lk(mutex);
  for (auto it = connections.begin(); it != connections.end();) {
    if (!it->done) {
      ++it;
      continue;
    }
    it->thread.join();  // already past its last use of the lock, so this returns at once
    it = connections.erase(it);
  }
}

void server::impl::run_connection(connection& c, tcp::socket sock) {
  try {
    if (tls) {
      ssl::stream<tcp::socket&> stream(sock, *tls);
      stream.handshake(ssl::stream_base::server);
      serve(c, stream, sock);
      beast::error_code ec;
      if (sock.is_open()) stream.shutdown(ec);  // close_notify, unless a fault reset the socket
    } else {
      serve(c, sock, sock);
    }
  } catch (...) {
    // A client that goes away mid-request or mid-stream lands here; that is expected.
  }
  close_socket(c, sock, false);
  std::lock_guard lk(mutex);
  c.done = true;
}

template <class Stream>
void server::impl::serve(connection& c, Stream& stream, tcp::socket& raw) {
  beast::flat_buffer buffer;
  for (;;) {
    http::request_parser<http::string_body> parser;
    parser.header_limit(max_request_header_bytes);
    parser.body_limit(max_request_body_bytes);
    beast::error_code ec;
    http::read_header(stream, buffer, parser, ec);
    if (ec) return;
    if (beast::iequals(parser.get()[http::field::expect], "100-continue"))
      http::write(stream, http::response<http::empty_body>{http::status::continue_, 11});
    http::read(stream, buffer, parser, ec);
    if (ec) return;

    http::request<http::string_body> req = parser.release();
    recorded_request rec{std::string(req.method_string()), std::string(req.target()), std::move(req.body()), {}};
    for (const auto& f : req) rec.headers.emplace_back(f.name_string(), f.value());
    const std::uint64_t number = record(rec);
    detail::knobs k;
    if (opts.default_headers.empty()) {
      k = detail::parse_knobs(rec);
    } else {
      recorded_request with_defaults = rec;  // the request's own x-fake-* headers win
      for (const auto& h : opts.default_headers) with_defaults.headers.push_back(h);
      k = detail::parse_knobs(with_defaults);
    }
    if (beast::websocket::is_upgrade(req) && k.status < 400 && k.fault_kind == fault::none) {
      const std::string_view path(req.target().data(), std::min(req.target().size(), req.target().find('?')));
      if (path == "/v1/responses" || path == "/v1/responses/")
        responses_session(stream, req, k, number);
      else if (path.starts_with("/v1/live/sessions"))
        live_session(stream, req, k, number, path.ends_with("/attach"));
      else
        realtime_session(stream, req, number);
      return;
    }
    detail::reply r = detail::make_reply(rec, k, number);
    if (k.early_hints) {  // sent at once; x-fake-delay-ms then keeps it apart from the answer
      beast::error_code ec;
      net::write(stream, net::buffer(std::string_view("HTTP/1.1 103 Early Hints\r\nLink: </hint.css>; rel=preload\r\n\r\n")), ec);
      if (ec) return;
    }
    if (!pause(k.delay)) return;
    const bool keep_alive = respond(c, stream, raw, k, r, number, req.keep_alive());
    if (opts.verbose)
      std::fprintf(stderr, "fake upstream: %s %s -> %u%s\n", rec.method.c_str(), rec.target.c_str(), r.status,
                   k.fault_kind == fault::none ? "" : " (fault)");
    if (!keep_alive) return;
  }
}

// A WebSocket session shaped like the OpenAI Realtime API's: "session.created" first (its
// `model` the handshake's ?model=), then every text message comes back as {"type":"echo",
// "data":…}; a message "close" makes the server close the session (code 1000). A
// {"type":"response.create"} is also answered as the API does: audio deltas (40 KB of base64
// each), a transcript delta, then "response.done" with the usage of the Realtime reference
// (input 1,000: text 200, audio 800, 600 cached of which 500 audio; output 300: text 50, audio
// 250). Ends when the client closes or goes away.
template <class Stream>
void server::impl::realtime_session(Stream& stream, const http::request<http::string_body>& req, std::uint64_t number) {
  beast::websocket::stream<Stream&> ws(stream);
  ws.set_option(beast::websocket::stream_base::decorator([number](beast::websocket::response_type& res) {
    res.set("x-request-id", "req_fake_" + std::to_string(number));
  }));
  std::string model;
  const std::string_view target(req.target().data(), req.target().size());
  if (const auto q = target.find("model="); q != std::string_view::npos)
    model = std::string(target.substr(q + 6, target.find('&', q) - (q + 6)));
  ws.accept(req);
  ws.text(true);
  nlohmann::json created{{"type", "session.created"},
                         {"event_id", "event_0"},
                         {"session", {{"id", "sess_fake_" + std::to_string(number)}, {"object", "realtime.session"}}}};
  if (!model.empty()) created["session"]["model"] = model;
  ws.write(net::buffer(created.dump()));
  int responses = 0;
  for (;;) {
    beast::flat_buffer in;
    beast::error_code ec;
    ws.read(in, ec);
    if (ec) return;  // closed by the client (ws.read answered its close frame) or gone
    const std::string text = beast::buffers_to_string(in.data());
    if (text == "close") {
      ws.close(beast::websocket::close_code::normal, ec);
      return;
    }
    ws.write(net::buffer(nlohmann::json{{"type", "echo"}, {"data", text}}.dump()), ec);
    if (ec) return;
    const auto event = nlohmann::json::parse(text, nullptr, false);
    if (!event.is_object() || event.value("type", "") != "response.create") continue;
    const std::string id = "resp_fake_" + std::to_string(number) + "_" + std::to_string(++responses);
    for (int k = 0; k < 3 && !ec; ++k)
      ws.write(net::buffer(nlohmann::json{{"type", "response.output_audio.delta"}, {"event_id", "event_d" + std::to_string(k)},
                                          {"response_id", id}, {"delta", std::string(40 * 1024, 'A')}}
                               .dump()),
               ec);
    if (!ec)
      ws.write(net::buffer(nlohmann::json{{"type", "response.output_audio_transcript.delta"}, {"response_id", id},
                                          {"delta", "Hello"}}
                               .dump()),
               ec);
    const nlohmann::json usage{
        {"total_tokens", 1300},
        {"input_tokens", 1000},
        {"output_tokens", 300},
        {"input_token_details",
         {{"text_tokens", 200}, {"audio_tokens", 800}, {"image_tokens", 0}, {"cached_tokens", 600},
          {"cached_tokens_details", {{"text_tokens", 100}, {"audio_tokens", 500}, {"image_tokens", 0}}}}},
        {"output_token_details", {{"text_tokens", 50}, {"audio_tokens", 250}}}};
    if (!ec)
      ws.write(net::buffer(nlohmann::json{{"type", "response.done"},
                                          {"event_id", "event_done"},
                                          {"response", {{"id", id}, {"object", "realtime.response"},
                                                        {"status", "completed"}, {"usage", usage}}}}
                               .dump()),
               ec);
    if (ec) return;
  }
}

// A WebSocket session shaped like the Responses API's WebSocket mode (GET /v1/responses): each
// {"type":"response.create", ...} is answered with the events a streamed POST /v1/responses of
// the same body would send (response.created ... response.completed with usage, the handshake's
// x-fake-* knobs applying, chunk intervals included), each its own text message, tagged with the create's `stream_id` when
// it has one; any other message gets an error event. A message "close" makes the server close
// the session (code 1000). Ends when the client closes or goes away.
template <class Stream>
void server::impl::responses_session(Stream& stream, const http::request<http::string_body>& req,
                                     const detail::knobs& k, std::uint64_t number) {
  beast::websocket::stream<Stream&> ws(stream);
  ws.set_option(beast::websocket::stream_base::decorator([number](beast::websocket::response_type& res) {
    res.set("x-request-id", "req_fake_" + std::to_string(number));
  }));
  ws.accept(req);
  ws.text(true);
  std::uint64_t responses = 0;
  for (;;) {
    beast::flat_buffer in;
    beast::error_code ec;
    ws.read(in, ec);
    if (ec) return;
    const std::string text = beast::buffers_to_string(in.data());
    if (text == "close") {
      ws.close(beast::websocket::close_code::normal, ec);
      return;
    }
    auto event = nlohmann::json::parse(text, nullptr, false);
    if (!event.is_object() || event.value("type", "") != "response.create") {
      const nlohmann::json error{{"type", "error"},
                                 {"status", 400},
                                 {"error", {{"type", "invalid_request_error"}, {"code", "unknown_event"},
                                            {"message", "fake upstream: expected response.create"}, {"param", nullptr}}}};
      ws.write(net::buffer(error.dump()), ec);
      if (ec) return;
      continue;
    }
    const nlohmann::json lane = event.contains("stream_id") ? event["stream_id"] : nlohmann::json();
    event.erase("type");
    event.erase("stream_id");
    event["stream"] = true;
    recorded_request as_post{"POST", "/v1/responses", event.dump(), {}};
    for (const auto& f : req) as_post.headers.emplace_back(f.name_string(), f.value());
    const detail::reply r = detail::make_reply(as_post, k, number * 1000 + ++responses);
    for (const auto& e : r.events) {
      if (e.delay_before.count() > 0) std::this_thread::sleep_for(e.delay_before);  // x-fake-chunk-interval-ms
      const std::size_t data = e.text.find("data: ");
      if (data == std::string::npos) continue;
      auto j = nlohmann::json::parse(e.text.substr(data + 6), nullptr, false);
      if (!j.is_object()) continue;  // [DONE]
      if (!lane.is_null()) j["stream_id"] = lane;
      ws.write(net::buffer(j.dump()), ec);
      if (ec) return;
    }
  }
}

// A WebSocket session shaped like the Live API's (GET /v1/live/sessions, a fork's socket; openai
// 7.x LiveWS): session.start is answered with session.started (its model the start's, else
// gpt-live-1); each session.input_audio.append adds its audio's length (base64 of PCM16 at
// 24 kHz) to the session's seconds, reported as a cumulative session.usage.updated; a
// response.create gets the events of a streamed POST /v1/responses at the delegation's model
// (session.delegation.responses.model, else gpt-4.1), each nested in a response.event; a
// session.close gets session.closed with the final seconds, then close 1000. A sideband socket
// (/attach) is sent what it would mirror of the session: a session.updated snapshot (its id the
// path's), 30 s of audio and one delegated response, then it echoes.
template <class Stream>
void server::impl::live_session(Stream& stream, const http::request<http::string_body>& req,
                                const detail::knobs& k, std::uint64_t number, bool sideband) {
  beast::websocket::stream<Stream&> ws(stream);
  ws.set_option(beast::websocket::stream_base::decorator([number](beast::websocket::response_type& res) {
    res.set("x-request-id", "req_fake_" + std::to_string(number));
  }));
  ws.accept(req);
  ws.text(true);
  nlohmann::json session{{"id", "ls_fake_" + std::to_string(number)}, {"model", "gpt-live-1"}, {"status", "active"},
                         {"expires_at", 4102444800}};
  std::string delegate = "gpt-4.1";
  double seconds = 0;
  std::uint64_t responses = 0;
  beast::error_code ec;
  auto send = [&](const nlohmann::json& j) { ws.write(net::buffer(j.dump()), ec); };
  auto delegated = [&](std::string_view delegation) {
    recorded_request as_post{"POST", "/v1/responses", nlohmann::json{{"model", delegate}, {"input", "live"}, {"stream", true}}.dump(), {}};
    for (const auto& f : req) as_post.headers.emplace_back(f.name_string(), f.value());
    const detail::reply r = detail::make_reply(as_post, k, number * 1000 + ++responses);
    for (const auto& e : r.events) {
      const std::size_t data = e.text.find("data: ");
      if (data == std::string::npos || ec) continue;
      auto j = nlohmann::json::parse(e.text.substr(data + 6), nullptr, false);
      if (!j.is_object()) continue;  // [DONE]
      send({{"type", "response.event"}, {"event_id", "ev_" + std::to_string(responses)}, {"delegation_id", delegation}, {"event", j}});
    }
  };
  if (sideband) {
    const std::string_view target(req.target().data(), req.target().size());
    const std::size_t from = std::string_view("/v1/live/sessions/").size();
    session["id"] = std::string(target.substr(from, target.find("/attach") - from));
    send({{"type", "session.updated"}, {"event_id", "ev_s"}, {"session", session}});
    send({{"type", "session.usage.updated"}, {"event_id", "ev_u"}, {"usage", {{"seconds", 30.0}}}});
    if (!ec) delegated("dl_sideband");
  }
  for (;;) {
    beast::flat_buffer in;
    ws.read(in, ec);
    if (ec) return;
    const std::string text = beast::buffers_to_string(in.data());
    const auto event = nlohmann::json::parse(text, nullptr, false);
    const std::string type = event.is_object() ? event.value("type", "") : "";
    if (sideband) {
      send({{"type", "echo"}, {"data", text}});
    } else if (type == "session.start") {
      const auto& cfg = event.contains("session") && event["session"].is_object() ? event["session"] : nlohmann::json::object();
      if (cfg.contains("model") && cfg["model"].is_string()) session["model"] = cfg["model"];
      if (cfg.contains("delegation") && cfg["delegation"].is_object()) {
        const auto& d = cfg["delegation"];
        if (d.contains("responses") && d["responses"].is_object() && d["responses"].contains("model") &&
            d["responses"]["model"].is_string())
          delegate = d["responses"]["model"].get<std::string>();
      }
      send({{"type", "session.started"}, {"event_id", "ev_s"}, {"session", session}});
    } else if (type == "session.input_audio.append") {
      const std::size_t b64 = event.contains("audio") && event["audio"].is_string() ? event["audio"].get_ref<const std::string&>().size() : 0;
      seconds += static_cast<double>(b64 / 4 * 3) / (24000.0 * 2);
      send({{"type", "session.usage.updated"}, {"event_id", "ev_a"}, {"usage", {{"seconds", seconds}}}});
    } else if (type == "response.create") {
      delegated("dl_" + std::to_string(responses + 1));
    } else if (type == "session.close") {
      send({{"type", "session.closed"}, {"event_id", "ev_c"}, {"reason", "close_requested"}, {"session", session},
            {"usage", {{"seconds", seconds}}}});
      if (!ec) ws.close(beast::websocket::close_code::normal, ec);
      return;
    } else {
      send({{"type", "error"}, {"event_id", "ev_e"},
            {"error", {{"type", "invalid_request_error"}, {"code", "unknown_event"}, {"message", "fake upstream: unknown Live event"}}}});
    }
    if (ec) return;
  }
}

// Returns whether the connection stays open for another request.
template <class Stream>
bool server::impl::respond(connection& c, Stream& stream, tcp::socket& raw, const detail::knobs& k,
                           detail::reply& r, std::uint64_t number, bool keep_alive) {
  switch (k.fault_kind) {
    case fault::reset_before_headers:
      close_socket(c, raw, true);
      return false;
    case fault::stall_before_headers:
      stall(raw);
      return false;
    case fault::garbage:
      net::write(stream, net::buffer(garbage_bytes));
      return false;
    case fault::not_json:
      r.status = 200;
      r.headers = {{"Content-Type", "application/json"}};
      r.body = "<html>oops</html>";
      break;
    case fault::truncated_json:
      r.body.resize(r.body.size() / 2);
      break;
    case fault::close_after_response:
      keep_alive = false;
      break;
    default:
      break;
  }
  return r.stream ? send_stream(c, stream, raw, k, r, number, keep_alive)
                  : send_body(c, stream, raw, k, r, number, keep_alive);
}

http::response<http::empty_body> server::impl::make_head(const detail::reply& r, const detail::knobs& k,
                                                         std::uint64_t number, bool keep_alive) const {
  http::response<http::empty_body> res{static_cast<http::status>(r.status), 11};
  res.set(http::field::server, "tollgate-fake-upstream");
  for (const auto& [name, value] : r.headers) res.set(name, value);
  res.set("x-request-id", "req_fake_" + std::to_string(number));
  res.set("openai-processing-ms", std::to_string(k.delay.count() + 1));
  if (k.coding != content_coding::identity)
    res.set(http::field::content_encoding, k.coding == content_coding::gzip ? "gzip" : "deflate");
  res.keep_alive(keep_alive);
  return res;
}

// Headers and body are written separately so the body faults can send a head that lies.
template <class Stream>
bool server::impl::send_body(connection& c, Stream& stream, tcp::socket& raw, const detail::knobs& k,
                             const detail::reply& r, std::uint64_t number, bool keep_alive) {
  const std::string payload = body_encoder(k.coding).push(r.body, true);
  auto res = make_head(r, k, number, keep_alive);
  std::string_view sent = payload;
  switch (k.fault_kind) {
    case fault::wrong_content_length:
      res.content_length(payload.size() + 100);
      keep_alive = false;
      break;
    case fault::bad_chunked:
      res.chunked(true);
      sent = bad_chunked_bytes;
      keep_alive = false;
      break;
    case fault::reset_mid_body:
    case fault::reset_mid_stream:
    case fault::stall_mid_stream:
      res.content_length(payload.size());
      sent = sent.substr(0, payload.size() / 2);
      keep_alive = false;
      break;
    default:
      res.content_length(payload.size());
      break;
  }
  http::response_serializer<http::empty_body> sr{res};
  http::write_header(stream, sr);
  net::write(stream, net::buffer(sent));
  if (k.fault_kind == fault::reset_mid_body || k.fault_kind == fault::reset_mid_stream) close_socket(c, raw, true);
  if (k.fault_kind == fault::stall_mid_stream) stall(raw);
  return keep_alive;
}

// One chunked-encoding chunk per SSE event, each written (and so flushed) on its own.
template <class Stream>
bool server::impl::send_stream(connection& c, Stream& stream, tcp::socket& raw, const detail::knobs& k,
                               const detail::reply& r, std::uint64_t number, bool keep_alive) {
  auto res = make_head(r, k, number, keep_alive);
  res.set(http::field::cache_control, "no-cache");
  res.chunked(true);
  http::response_serializer<http::empty_body> sr{res};
  http::write_header(stream, sr);

  body_encoder encoder(k.coding);
  auto send = [&](std::string_view text, bool finish) {
    const std::string bytes = encoder.push(text, finish);
    if (!bytes.empty()) net::write(stream, http::make_chunk(net::buffer(bytes)));  // empty would end the body
  };
  std::size_t limit = r.events.size();
  if (k.fault_kind == fault::reset_mid_stream || k.fault_kind == fault::stall_mid_stream ||
      k.fault_kind == fault::error_mid_stream)
    limit = std::min<std::size_t>(limit, 2);
  if (k.fault_kind == fault::cut_stream) limit = std::min<std::size_t>(limit, 3);
  for (std::size_t i = 0; i < limit; ++i) {
    if (!pause(r.events[i].delay_before)) return false;
    send(r.events[i].text, false);
  }
  if (k.fault_kind == fault::reset_mid_stream) {
    close_socket(c, raw, true);
    return false;
  }
  if (k.fault_kind == fault::stall_mid_stream) {
    stall(raw);
    return false;
  }
  if (k.fault_kind == fault::error_mid_stream) send(r.error_event, false);
  send({}, true);
  net::write(stream, http::make_chunk_last());
  return keep_alive;
}

void server::impl::close_socket(connection& c, tcp::socket& raw, bool reset) {
  {
    std::lock_guard lk(mutex);
    c.fd = -1;
  }
  beast::error_code ec;
  // SO_LINGER with a zero timeout makes close() send RST instead of FIN.
  if (reset) raw.set_option(net::socket_base::linger(true, 0), ec);
  raw.close(ec);
}

// Answers nothing until the client closes, the server stops, or stall_limit passes.
void server::impl::stall(tcp::socket& raw) {
  const auto deadline = std::chrono::steady_clock::now() + stall_limit;
  const int fd = raw.native_handle();
  for (;;) {
    const auto left =
        std::chrono::duration_cast<milliseconds>(deadline - std::chrono::steady_clock::now()).count();
    if (left <= 0) return;
    pollfd p{fd, POLLIN, 0};
    const int n = ::poll(&p, 1, static_cast<int>(left));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    char scratch[4096];
    const ssize_t got = ::recv(fd, scratch, sizeof scratch, 0);
    if (got == 0 || (got < 0 && errno != EAGAIN && errno != EINTR)) return;
  }
}

bool server::impl::pause(milliseconds d) {
  std::unique_lock lk(mutex);
  if (d.count() <= 0) return !stopping;
  return !stop_signal.wait_for(lk, d, [this] { return stopping; });
}

std::uint64_t server::impl::record(const recorded_request& r) {
  std::lock_guard lk(mutex);
  ++count;
  if (opts.record_requests) log.push_back(r);
  return ++next_number;
}

server::server(options o) : impl_(std::make_unique<impl>(std::move(o))) {}

server::~server() = default;

uint16_t server::port() const { return impl_->port; }

std::string server::base_url() const {
  std::string host = impl_->opts.host;
  if (host == "0.0.0.0" || host.empty()) host = "127.0.0.1";
  if (host == "::") host = "::1";
  if (host.find(':') != std::string::npos) host = "[" + host + "]";
  return (impl_->tls ? "https://" : "http://") + host + ":" + std::to_string(impl_->port) + "/v1";
}

std::vector<recorded_request> server::requests() const {
  std::lock_guard lk(impl_->mutex);
  return impl_->log;
}

std::size_t server::request_count() const {
  std::lock_guard lk(impl_->mutex);
  return impl_->count;
}

void server::clear() {
  std::lock_guard lk(impl_->mutex);
  impl_->log.clear();
  impl_->count = 0;
}

}  // namespace fake
