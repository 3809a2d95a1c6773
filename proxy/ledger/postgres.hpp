// The libpq helpers every reader and writer of the fleet ledger shares: the shipper and fleet
// budgets (pg_shipper.cpp), `tollgate report --fleet` (report.cpp) and `tollgate-forecast --fleet`.
// libpq's header stays in the .cpp files that use it: PGconn is declared here, as libpq-fe.h does.
#pragma once
#include <chrono>
#include <string>

typedef struct pg_conn PGconn;      // NOLINT: libpq's own declarations
typedef struct pg_result PGresult;  // NOLINT

namespace tollgate {

// libpq's message as one line for a log or an error: continuation lines (tab-indented) joined
// with "; ", the trailing newline dropped.
std::string trim_message(std::string m);

// A connection in UTF-8, with TCP keepalives that find a vanished server in about 30 s; nullptr
// (the connection closed, err filled) when it fails. The url (a libpq URI or key=value
// conninfo) may set its own connect_timeout or keepalives_*: keywords before it are
// overridden by the url's (libpq expands dbname as a connection string, in order). The error
// never repeats the url, which may hold a password (libpq's messages do not).
PGconn* connect_postgres(const std::string& url, std::chrono::seconds connect_timeout, const char* application,
                         const char* tcp_user_timeout_ms, std::string& err);

// The fleet table's name.
inline constexpr const char* kFleetTable = "tollgate_calls";

// "PostgreSQL: <message>" for a failed query of the fleet table, without the query's text, and
// what a missing table (no fleet ledger in that database) or column (a table made by an older
// tollgate) means.
std::string fleet_query_error(const PGresult* r);

}  // namespace tollgate
