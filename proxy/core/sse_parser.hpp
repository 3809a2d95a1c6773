// Incremental Server-Sent Events framing (https://html.spec.whatwg.org/multipage/server-sent-events.html):
// bytes in, whole events out with their exact raw bytes, so the relay can forward events
// unchanged or drop one (the usage-only chunk). Pure; no allocation per event once warmed up.
#pragma once
#include <cstddef>
#include <string>
#include <string_view>

namespace tollgate {

struct sse_event {
  std::string_view raw;    // the event's exact bytes, terminating blank line included
  std::string_view event;  // value of the `event:` field ("" when absent)
  std::string_view data;   // `data:` lines joined with '\n' (one leading space stripped per line)
  bool has_data = false;   // at least one `data:` line
  // Views are valid until the next call to append() or next() on the parser.
};

class sse_parser {
 public:
  // Appends bytes read from the upstream (any split: mid-line, mid-CRLF, mid-UTF-8).
  void append(std::string_view bytes);
  // Extracts the next complete event (terminated by a blank line; lines end in LF, CRLF or CR).
  // A lone CR at the end of the buffer waits for the next byte to know whether LF follows,
  // except a blank line's: the event is complete, and an LF after it is an empty event.
  bool next(sse_event& out);
  // At end of stream: bytes of an unterminated trailing event (forwarded as-is by the relay).
  std::string_view pending() const noexcept;
  // At end of stream: parses the unterminated trailing event as if terminated; false if none.
  bool finish(sse_event& out);
  void reset();

 private:
  bool extract(sse_event& out, bool at_eof);
  std::size_t find_event_end(bool at_eof) noexcept;
  void parse_event(std::size_t end, sse_event& out);

  std::string buf_;
  std::size_t pos_ = 0;     // start of the first unconsumed byte
  std::string data_;        // scratch for joined data lines
  // Offsets into buf_ (all >= pos_), kept so a partial event is never rescanned from its start.
  std::size_t lines_ = 0;    // first line of the current event (after a leading BOM)
  std::size_t line_ = 0;     // start of the line whose terminator is being looked for
  std::size_t scan_ = 0;     // where to resume looking for that terminator
  bool bom_pending_ = true;  // stream start: a UTF-8 BOM may still arrive
  bool cr_ = false;          // buf_ may hold a CR (false: it holds none, lines end at LF)
  // The first lines of the current event as find_event_end found their ends (terminator, next
  // line), so that parse_event does not scan them again; an event has two or three lines.
  void note_line_end(std::size_t eol, std::size_t next) noexcept {
    if (n_ends_ < kNotedLines) ends_[n_ends_++] = {eol, next};
  }
  struct line_end {
    std::size_t eol, next;
  };
  static constexpr std::size_t kNotedLines = 8;
  line_end ends_[kNotedLines] = {};
  std::size_t n_ends_ = 0;
};

}  // namespace tollgate
