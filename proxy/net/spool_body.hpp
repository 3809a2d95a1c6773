// A Beast body type that stores a request body in an unnamed temporary file: how a pass-through
// upload larger than server.max_body_bytes (a 200 MB batch file, a 64 MB Uploads API part) is
// taken whole without holding it in memory, then sent upstream from the file, as many times as
// failover and stale-connection retries need (see the README's "Large uploads" design note).
// A body of unknown length (chunked) starts in memory and moves to a file only past a size
// (spill), so a small one never touches the disk.
//
// The file is created with O_TMPFILE (no name, so nothing is left behind by a crash) or, where
// the file system lacks it, with mkstemp and an immediate unlink. Writes go to the page cache
// from the I/O thread, as nginx's request-body buffering does; they block only when the disk
// cannot keep up with dirty pages.
#pragma once

#include <boost/beast/core/error.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/optional.hpp>

#include <cstdint>
#include <string>
#include <utility>

namespace tollgate {

// A pass-through body larger than this (or than max_body_bytes, when smaller) is stored in a
// file: max_body_bytes is sized for JSON with inline images (OpenAI takes 50 MB of them), and
// an upload of that size need not sit in memory while it is read and sent.
inline constexpr std::uint64_t spool_above_bytes = 8u << 20;

struct spool_body {
  class value_type {
   public:
    value_type() = default;
    value_type(value_type&& o) noexcept { take(o); }
    value_type& operator=(value_type&& o) noexcept {
      if (this != &o) {
        close();
        take(o);
      }
      return *this;
    }
    value_type(const value_type&) = delete;
    value_type& operator=(const value_type&) = delete;
    ~value_type() { close(); }

    // Creates an empty unnamed file in `dir` ("": $TMPDIR, else /var/tmp) at once. On failure
    // returns false with the reason in `why`.
    bool open(const std::string& dir, std::string& why);
    // Keeps up to `spill_at` bytes in memory; the file in `dir` is created when more come. When
    // it cannot be created, the body stays in memory up to `memory_cap` (then write_error()).
    void start(std::string dir, std::uint64_t spill_at, std::uint64_t memory_cap);
    void close() noexcept;
    // The body is held here (open() or start() was called).
    bool active() const noexcept { return active_; }
    std::uint64_t size() const noexcept { return size_; }
    // errno of the write, or of the creation of the file, that failed while the body was stored
    // (0: none).
    int write_error() const noexcept { return error_; }
    // Up to `n` bytes from `offset` into `out`: the count read (0 at the end), or -1 with errno.
    long read_at(std::uint64_t offset, char* out, std::size_t n) const noexcept;
    // Appends `n` bytes; false (and write_error() set) when the file system refuses them.
    bool append(const char* data, std::size_t n) noexcept;

   private:
    static int create_file(const std::string& dir, std::string& why);
    void take(value_type& o) noexcept {
      fd_ = std::exchange(o.fd_, -1);
      size_ = std::exchange(o.size_, 0);
      error_ = std::exchange(o.error_, 0);
      active_ = std::exchange(o.active_, false);
      spill_at_ = std::exchange(o.spill_at_, 0);
      memory_cap_ = std::exchange(o.memory_cap_, 0);
      spill_error_ = std::exchange(o.spill_error_, 0);
      memory_ = std::move(o.memory_);
      dir_ = std::move(o.dir_);
    }
    int fd_ = -1;
    std::uint64_t size_ = 0;
    int error_ = 0;
    bool active_ = false;
    std::uint64_t spill_at_ = 0;
    std::uint64_t memory_cap_ = 0;  // how far memory may hold it when no file can be created
    int spill_error_ = 0;           // errno of that failed creation (not tried again)
    std::string memory_;  // the body until it passes spill_at_ (then in the file)
    std::string dir_;
  };

  // What the parser writes the body through.
  class reader {
   public:
    template <bool isRequest, class Fields>
    reader(boost::beast::http::header<isRequest, Fields>&, value_type& body) : body_(body) {}

    void init(const boost::optional<std::uint64_t>&, boost::beast::error_code& ec) {
      ec = body_.active() ? boost::beast::error_code{}
                          : boost::beast::error_code(EBADF, boost::system::system_category());
    }
    template <class ConstBufferSequence>
    std::size_t put(const ConstBufferSequence& buffers, boost::beast::error_code& ec) {
      std::size_t n = 0;
      for (auto it = boost::asio::buffer_sequence_begin(buffers); it != boost::asio::buffer_sequence_end(buffers); ++it) {
        boost::asio::const_buffer b = *it;
        if (!body_.append(static_cast<const char*>(b.data()), b.size())) {
          ec = boost::beast::error_code(body_.write_error(), boost::system::system_category());
          return n;
        }
        n += b.size();
      }
      ec = {};
      return n;
    }
    void finish(boost::beast::error_code& ec) { ec = {}; }

   private:
    value_type& body_;
  };
};

}  // namespace tollgate
