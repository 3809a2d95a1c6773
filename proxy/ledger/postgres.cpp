// libpq helpers shared by the fleet ledger's readers and writers (postgres.hpp). A file of its
// own, so the forecast tool's tests and fuzz target can link it without the shipper.
#include "ledger/postgres.hpp"

#include <libpq-fe.h>

#include <algorithm>
#include <string_view>

namespace tollgate {

std::string trim_message(std::string m) {
  // libpq's messages are lines, continuation lines indented with a tab: one line for the log.
  std::string out;
  for (std::size_t i = 0; i < m.size(); ++i) {
    if (m[i] == '\n' || m[i] == '\t') {
      while (i + 1 < m.size() && (m[i + 1] == '\n' || m[i + 1] == '\t' || m[i + 1] == ' ')) ++i;
      if (!out.empty() && i + 1 < m.size()) out += "; ";
    } else {
      out += m[i];
    }
  }
  while (!out.empty() && out.back() == ' ') out.pop_back();
  return out;
}

PGconn* connect_postgres(const std::string& url, std::chrono::seconds connect_timeout, const char* application,
                         const char* tcp_user_timeout_ms, std::string& err) {
  const std::string timeout = std::to_string(std::max<long long>(1, connect_timeout.count()));
  // tcp_user_timeout ends a connection whose sent data goes unacknowledged; a connection waiting
  // for a result sends nothing, so a server that vanished (its host down, a partition) is found
  // by TCP keepalives only: after the system's default of two idle hours, a report or the
  // shipper's read of the fleet's spend hung that long. Probes after 15 s idle, every 5 s, 3
  // missed: about 30 s. A busy server's kernel answers them, so a long query is not cut.
  const char* keys[] = {"connect_timeout", "application_name", "tcp_user_timeout", "keepalives", "keepalives_idle",
                        "keepalives_interval", "keepalives_count", "dbname", nullptr};
  const char* vals[] = {timeout.c_str(), application, tcp_user_timeout_ms, "1", "15", "5", "3", url.c_str(), nullptr};
  PGconn* c = PQconnectdbParams(keys, vals, 1);
  if (c != nullptr && PQstatus(c) == CONNECTION_OK && PQsetClientEncoding(c, "UTF8") == 0) return c;
  err = trim_message(c ? PQerrorMessage(c) : "out of memory");
  if (c) PQfinish(c);
  return nullptr;
}

std::string fleet_query_error(const PGresult* r) {
  const char* state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
  const char* primary = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
  const std::string_view code = state ? state : "";
  return "PostgreSQL: " + (primary ? std::string(primary) : trim_message(PQresultErrorMessage(r))) +
         (code == "42P01"   ? " (no tollgate fleet ledger here: ledger.postgres makes table tollgate_calls)"
          : code == "42703" ? " (a fleet table made by an older tollgate: a tollgate that owns it adds the column at "
                              "its next connection)"
                            : "");
}

}  // namespace tollgate
