// Socket reads that spare Asio's speculative recv() (issue 5).
//
// Asio (Boost 1.81, epoll) starts every socket read with a non-blocking recv() and waits for
// epoll only when it fails with EAGAIN; the reactor skips that first try only once it has marked
// the descriptor drained, which it does after a read of 0 bytes (EOF) alone. A proxy's reads
// nearly always come before their data: the next request on a keep-alive connection is read as
// soon as the last reply is out, the upstream's answer as soon as the request is. So two recv()
// per proxied call failed with EAGAIN (bench/RESULTS.md).
//
// A read through `drained_buffer` marks the descriptor drained also when it returned fewer bytes
// than it asked for: Linux TCP recv() returns less than asked only when no data is left queued,
// and any byte that arrives later raises the edge-triggered epoll event again, on which the
// reactor turns speculative reads back on before it runs the next read (under the descriptor's
// lock, as this read's).
//
// What can still be queued is an end of stream (a FIN or a reset that came with the last bytes,
// its event already consumed): a read that waits after that is not woken. So the next wait on
// the socket after a drained read must follow a read that does not wait, and only two reads opt
// in (client_session.cpp):
//  - the client's next request on a keep-alive connection. Waits after it: the request body
//    (its synchronous read comes first), the next request (a hot read of at most 50 ms, then
//    parking, which first reads without waiting), the lingering close (the same), a WebSocket
//    tunnel's reads (after its 101 went out). In practice the client's ACK of what tollgate
//    sent re-announces a pending end of stream anyway: epoll reports the whole readiness on
//    that EPOLLOUT edge, and the reactor then runs the queued read;
//  - the plain-TCP upstream's response head. The body loop reads once without waiting first
//    (faults_test: a body cut short by the upstream's close). The next call on that pooled
//    connection waits only after sending its request, which a closed peer answers with a reset:
//    a new event.
// Every other read keeps Asio's rule.
//
// The opt-in is by type: Asio builds a read operation from `reactive_socket_recv_op_base<B>` for
// buffer sequence B, and this header specializes it for `drained_buffer` and for the prefix view
// beast::basic_stream wraps around it. Included wherever such a read is made; no other type is
// affected. With another reactor (io_uring) or Boost version the specializations are not used or
// not compiled, and the reads behave as any other.
#pragma once

#include <boost/asio/buffer.hpp>
#include <boost/asio/detail/reactive_socket_recv_op.hpp>
#include <boost/beast/core/buffers_prefix.hpp>
#include <boost/version.hpp>

namespace tollgate {

// One mutable buffer, a MutableBufferSequence of its own type.
struct drained_buffer {
  using value_type = boost::asio::mutable_buffer;
  using const_iterator = const boost::asio::mutable_buffer*;
  boost::asio::mutable_buffer buffer;
  const_iterator begin() const noexcept { return &buffer; }
  const_iterator end() const noexcept { return &buffer + 1; }
};

namespace detail {
#if BOOST_VERSION == 108100
namespace asio_detail = boost::asio::detail;

// The operation base shared by the specializations below: Asio's own, but for the drained rule.
template <typename Buffers>
class drained_recv_op_base : public asio_detail::reactor_op {
 public:
  drained_recv_op_base(const boost::system::error_code& success_ec, asio_detail::socket_type socket,
                       asio_detail::socket_ops::state_type state, const Buffers& buffers,
                       boost::asio::socket_base::message_flags flags, func_type complete_func)
      : reactor_op(success_ec, &drained_recv_op_base::do_perform, complete_func),
        socket_(socket), state_(state), buffers_(buffers), flags_(flags) {}

  static status do_perform(reactor_op* base) {
    auto* o = static_cast<drained_recv_op_base*>(base);
    // Both types hold exactly one buffer.
    const boost::asio::mutable_buffer b = *boost::asio::buffer_sequence_begin(o->buffers_);
    const bool stream = (o->state_ & asio_detail::socket_ops::stream_oriented) != 0;
    if (!asio_detail::socket_ops::non_blocking_recv1(o->socket_, b.data(), b.size(), o->flags_, stream, o->ec_,
                                                     o->bytes_transferred_))
      return not_done;
    // Asio's rule (0 bytes: EOF) plus the short read; a peek or out-of-band read leaves data.
    if (stream && (o->bytes_transferred_ == 0 ||
                   (!o->ec_ && (o->flags_ & (MSG_PEEK | MSG_OOB)) == 0 && o->bytes_transferred_ < b.size())))
      return done_and_exhausted;
    return done;
  }

 private:
  asio_detail::socket_type socket_;
  asio_detail::socket_ops::state_type state_;
  Buffers buffers_;
  boost::asio::socket_base::message_flags flags_;
};
#endif
}  // namespace detail
}  // namespace tollgate

#if BOOST_VERSION == 108100
namespace boost::asio::detail {
template <>
class reactive_socket_recv_op_base<tollgate::drained_buffer>
    : public tollgate::detail::drained_recv_op_base<tollgate::drained_buffer> {
 public:
  using drained_recv_op_base::drained_recv_op_base;
};

template <>
class reactive_socket_recv_op_base<boost::beast::buffers_prefix_view<tollgate::drained_buffer>>
    : public tollgate::detail::drained_recv_op_base<boost::beast::buffers_prefix_view<tollgate::drained_buffer>> {
 public:
  using drained_recv_op_base::drained_recv_op_base;
};
}  // namespace boost::asio::detail
#endif
