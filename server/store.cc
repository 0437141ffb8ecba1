#include "server/store.h"

#include <sqlite3.h>
#include <sys/stat.h>

#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/status_macros.h"

namespace tlserve {
namespace {

using tlserve::v1::Backbone;
using tlserve::v1::CheckpointInfo;
using tlserve::v1::Dataset;
using tlserve::v1::Job;
using tlserve::v1::JobEvent;
using tlserve::v1::JobState;
using tlserve::v1::Model;

// Schema migrations, applied in order; entry i is version i + 1. Never edit
// an entry that has shipped: a database that already recorded its version
// would not see the change. Append a new one instead.
constexpr const char* kMigrations[] = {
    // 1: the initial schema.
    R"sql(
CREATE TABLE counters (
  name TEXT PRIMARY KEY,
  value INTEGER NOT NULL
);
-- create_seq orders every resource by creation; queue_seq is the FIFO order
-- of queued jobs. Counters rather than MAX()+1 so that a deleted newest row
-- never gives its number to another (page tokens stay unambiguous).
INSERT INTO counters (name, value) VALUES ('create_seq', 0), ('queue_seq', 0);

CREATE TABLE datasets (
  id TEXT PRIMARY KEY,
  create_seq INTEGER NOT NULL UNIQUE,
  proto BLOB NOT NULL
);
CREATE TABLE backbones (
  id TEXT PRIMARY KEY,
  create_seq INTEGER NOT NULL UNIQUE,
  proto BLOB NOT NULL
);
CREATE TABLE models (
  id TEXT PRIMARY KEY,
  create_seq INTEGER NOT NULL UNIQUE,
  proto BLOB NOT NULL
);

CREATE TABLE jobs (
  id TEXT PRIMARY KEY,
  state INTEGER NOT NULL,
  priority INTEGER NOT NULL,
  attempt INTEGER NOT NULL,
  queue_seq INTEGER NOT NULL,
  create_seq INTEGER NOT NULL,
  -- Microseconds since the epoch; NULL while the job has not ended.
  end_time_us INTEGER,
  proto BLOB NOT NULL
);
CREATE INDEX jobs_by_queue_order ON jobs (state, priority DESC, queue_seq);
CREATE UNIQUE INDEX jobs_by_create_seq ON jobs (create_seq);
CREATE INDEX jobs_by_state_create_seq ON jobs (state, create_seq);

CREATE TABLE job_events (
  sequence INTEGER PRIMARY KEY AUTOINCREMENT,
  job_id TEXT NOT NULL REFERENCES jobs (id),
  proto BLOB NOT NULL
);
CREATE INDEX job_events_by_job ON job_events (job_id, sequence);

CREATE TABLE checkpoints (
  seq INTEGER PRIMARY KEY,
  job_id TEXT NOT NULL REFERENCES jobs (id),
  epoch INTEGER NOT NULL,
  attempt INTEGER NOT NULL,
  proto BLOB NOT NULL
);
CREATE INDEX checkpoints_by_job ON checkpoints (job_id, seq);

CREATE TABLE request_ids (
  scope TEXT NOT NULL,
  request_id TEXT NOT NULL,
  resource_id TEXT NOT NULL,
  PRIMARY KEY (scope, request_id)
);
)sql",
    // 2: per-record labels and content hashes of each dataset, written at
    // upload, so job validation can check a job's split (duplicates across
    // train/validation) without decoding the images again. Datasets from
    // before this version have no row; their jobs skip those checks.
    R"sql(
CREATE TABLE dataset_image_index (
  dataset_id TEXT PRIMARY KEY REFERENCES datasets (id) ON DELETE CASCADE,
  data BLOB NOT NULL
);
)sql",
    // 3: the last runs' mean (queue estimates on every GetJob of a queued
    // job) reads the newest finished jobs without sorting all of them.
    R"sql(
CREATE INDEX jobs_by_state_end_time ON jobs (state, end_time_us DESC, create_seq DESC);
)sql",
    // 4: tenants. Datasets, jobs and models belong to the tenant that made
    // them; rows from before are tenant 'default', the tenant of every call
    // when authentication is off. Backbones an admin uploaded belong to no
    // tenant (''): all may use them. Request ids are scoped by tenant, so
    // two tenants' retries never meet.
    R"sql(
ALTER TABLE datasets ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
ALTER TABLE models ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
ALTER TABLE jobs ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
ALTER TABLE backbones ADD COLUMN tenant TEXT NOT NULL DEFAULT '';
CREATE INDEX datasets_by_tenant ON datasets (tenant, create_seq);
CREATE INDEX models_by_tenant ON models (tenant, create_seq);
CREATE INDEX backbones_by_tenant ON backbones (tenant, create_seq);
CREATE INDEX jobs_by_tenant_state ON jobs (tenant, state, create_seq);
UPDATE request_ids SET scope = scope || '/default' WHERE scope IN ('dataset', 'job');
UPDATE request_ids SET scope = 'backbone/' WHERE scope = 'backbone';
)sql",
};
constexpr int kLatestVersion =
    static_cast<int>(sizeof(kMigrations) / sizeof(kMigrations[0]));

constexpr int kDefaultPageSize = 100;
constexpr int kMaxPageSize = 1000;
constexpr int kBusyTimeoutMs = 5000;

// One status per SQLite failure, so callers can tell "retry" (UNAVAILABLE)
// and "disk full" (RESOURCE_EXHAUSTED) from bugs and corruption (INTERNAL).
absl::Status SqliteStatus(int rc, absl::string_view what,
                          absl::string_view detail) {
  std::string message =
      absl::StrFormat("sqlite: %s: %s (code %d)", what, detail, rc);
  switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      return absl::UnavailableError(message);
    case SQLITE_FULL:
      return absl::ResourceExhaustedError(message);
    default:
      return absl::InternalError(message);
  }
}

absl::Status SqliteError(sqlite3* db, int rc, absl::string_view what) {
  return SqliteStatus(rc, what,
                      db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
}

// Owns one prepared statement; finalizes it on destruction.
class Statement {
 public:
  static absl::StatusOr<Statement> Prepare(sqlite3* db, absl::string_view sql) {
    sqlite3_stmt* stmt = nullptr;
    int rc = sqlite3_prepare_v2(db, sql.data(), static_cast<int>(sql.size()),
                                &stmt, nullptr);
    if (rc != SQLITE_OK) {
      sqlite3_finalize(stmt);
      return SqliteError(db, rc, absl::StrCat("prepare '", sql, "'"));
    }
    return Statement(db, stmt);
  }

  Statement(Statement&& other) noexcept
      : db_(other.db_), stmt_(std::exchange(other.stmt_, nullptr)) {}
  Statement& operator=(Statement&& other) noexcept {
    if (this != &other) {
      sqlite3_finalize(stmt_);
      db_ = other.db_;
      stmt_ = std::exchange(other.stmt_, nullptr);
    }
    return *this;
  }
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;
  ~Statement() { sqlite3_finalize(stmt_); }

  // Parameters are 1-based, as in SQLite. Values are copied
  // (SQLITE_TRANSIENT) so temporaries may be passed.
  absl::Status Bind(int index, int64_t value) {
    return Check(sqlite3_bind_int64(stmt_, index, value), "bind");
  }
  absl::Status Bind(int index, absl::string_view text) {
    return Check(
        sqlite3_bind_text(stmt_, index, text.data(),
                          static_cast<int>(text.size()), SQLITE_TRANSIENT),
        "bind");
  }
  absl::Status BindBlob(int index, absl::string_view bytes) {
    return Check(
        sqlite3_bind_blob(stmt_, index, bytes.data(),
                          static_cast<int>(bytes.size()), SQLITE_TRANSIENT),
        "bind");
  }
  absl::Status BindNull(int index) {
    return Check(sqlite3_bind_null(stmt_, index), "bind");
  }

  // True when a row is ready, false when the statement is done.
  absl::StatusOr<bool> Step() {
    int rc = sqlite3_step(stmt_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    return SqliteError(db_, rc,
                       absl::StrCat("step '", sqlite3_sql(stmt_), "'"));
  }
  // Steps to the end (a statement that returns no rows, or the rest of
  // one), then resets it, keeping the bindings, for the next run.
  absl::Status Run() {
    while (true) {
      absl::StatusOr<bool> row = Step();
      if (!row.ok() || !*row) {
        sqlite3_reset(stmt_);
        return row.status();
      }
    }
  }

  int64_t Int64(int column) { return sqlite3_column_int64(stmt_, column); }
  bool IsNull(int column) {
    return sqlite3_column_type(stmt_, column) == SQLITE_NULL;
  }
  absl::string_view Text(int column) {
    const auto* p =
        reinterpret_cast<const char*>(sqlite3_column_text(stmt_, column));
    return p == nullptr
               ? absl::string_view()
               : absl::string_view(p, sqlite3_column_bytes(stmt_, column));
  }
  absl::string_view Blob(int column) {
    // An empty blob comes back as NULL: an empty proto, which is valid.
    const auto* p =
        static_cast<const char*>(sqlite3_column_blob(stmt_, column));
    return p == nullptr
               ? absl::string_view()
               : absl::string_view(p, sqlite3_column_bytes(stmt_, column));
  }

 private:
  Statement(sqlite3* db, sqlite3_stmt* stmt) : db_(db), stmt_(stmt) {}
  absl::Status Check(int rc, absl::string_view what) {
    return rc == SQLITE_OK ? absl::OkStatus() : SqliteError(db_, rc, what);
  }

  sqlite3* db_;
  sqlite3_stmt* stmt_;
};

// For statements without parameters: pragmas, BEGIN, COMMIT, migrations.
absl::Status Exec(sqlite3* db, const char* sql) {
  char* error = nullptr;
  int rc = sqlite3_exec(db, sql, nullptr, nullptr, &error);
  if (rc == SQLITE_OK) return absl::OkStatus();
  std::string detail = error != nullptr ? error : sqlite3_errstr(rc);
  sqlite3_free(error);
  // Migrations are long: name only their first line.
  absl::string_view what = absl::StripLeadingAsciiWhitespace(sql);
  what = what.substr(0, what.find('\n'));
  return SqliteStatus(rc, absl::StrCat("'", what, "'"), detail);
}

// Runs body inside BEGIN IMMEDIATE ... COMMIT. IMMEDIATE takes the write
// lock up front, so a transaction never fails half-way on a lock upgrade.
// Any error rolls everything back.
absl::Status InTransaction(sqlite3* db,
                           absl::FunctionRef<absl::Status()> body) {
  RETURN_IF_ERROR(Exec(db, "BEGIN IMMEDIATE"));
  absl::Status status = body();
  if (status.ok()) status = Exec(db, "COMMIT");
  if (!status.ok() && !sqlite3_get_autocommit(db)) {
    // Best effort: the original error is the one worth reporting. A failed
    // COMMIT (e.g. SQLITE_BUSY) leaves the transaction open, hence the check.
    Exec(db, "ROLLBACK").IgnoreError();
  }
  return status;
}

absl::StatusOr<int64_t> NextCounter(sqlite3* db, absl::string_view name) {
  ASSIGN_OR_RETURN(Statement stmt,
                   Statement::Prepare(db,
                                      "UPDATE counters SET value = value + 1 "
                                      "WHERE name = ?1 RETURNING value"));
  RETURN_IF_ERROR(stmt.Bind(1, name));
  ASSIGN_OR_RETURN(bool row, stmt.Step());
  if (!row)
    return absl::InternalError(absl::StrCat("counter '", name, "' missing"));
  int64_t value = stmt.Int64(0);
  RETURN_IF_ERROR(stmt.Run());
  return value;
}

int ClampPageSize(int page_size) {
  if (page_size <= 0) return kDefaultPageSize;
  return page_size > kMaxPageSize ? kMaxPageSize : page_size;
}

// A page token is the create_seq of the last item returned, base64 encoded
// so that clients treat it as opaque.
std::string EncodePageToken(int64_t create_seq) {
  return absl::WebSafeBase64Escape(absl::StrCat(create_seq));
}

absl::StatusOr<int64_t> DecodePageToken(const std::string& token) {
  std::string decoded;
  int64_t seq = 0;
  if (!absl::WebSafeBase64Unescape(token, &decoded) ||
      !absl::SimpleAtoi(decoded, &seq) || seq < 0 ||
      EncodePageToken(seq) != token) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "page_token '%s' is not valid; pass the next_page_token of the "
        "previous page, or none for the first page",
        absl::CHexEscape(token)));
  }
  return seq;
}

template <typename T>
absl::StatusOr<T> ParseProto(absl::string_view bytes, absl::string_view what) {
  T message;
  if (!message.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return absl::DataLossError(absl::StrCat(
        what, ": the stored record does not parse; the database is damaged"));
  }
  return message;
}

// Rows stored before schema 4 carry no tenant in their proto: the column
// is the truth.
template <typename T>
absl::StatusOr<T> ParseOwned(absl::string_view bytes, absl::string_view tenant,
                             absl::string_view what) {
  ASSIGN_OR_RETURN(T message, ParseProto<T>(bytes, what));
  message.set_tenant(std::string(tenant));
  return message;
}

std::string Quoted(absl::string_view kind, absl::string_view id) {
  return absl::StrCat(kind, " '", id, "'");
}

// Reads the rows (id, create_seq, proto) of a query that asked for
// limit + 1 rows: the extra row only tells that another page exists, so the
// last page never hands out a token that leads to an empty page.
template <typename T>
absl::StatusOr<Store::Page<T>> ReadPage(Statement& stmt, int limit,
                                        absl::string_view kind) {
  Store::Page<T> page;
  int64_t last_seq = 0;
  while (true) {
    ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) break;
    if (static_cast<int>(page.items.size()) == limit) {
      page.next_page_token = EncodePageToken(last_seq);
      break;
    }
    ASSIGN_OR_RETURN(T item, ParseOwned<T>(stmt.Blob(2), stmt.Text(3),
                                           Quoted(kind, stmt.Text(0))));
    page.items.push_back(std::move(item));
    last_seq = stmt.Int64(1);
  }
  return page;
}

std::string RequestScope(absl::string_view kind, absl::string_view tenant) {
  return absl::StrCat(kind, "/", tenant);
}

absl::Status RecordRequest(sqlite3* db, absl::string_view kind,
                           absl::string_view tenant,
                           const std::string& request_id,
                           const std::string& resource_id) {
  if (request_id.empty()) return absl::OkStatus();
  const std::string scope = RequestScope(kind, tenant);
  // The first mapping wins: a retry must find the resource it created first.
  ASSIGN_OR_RETURN(Statement stmt,
                   Statement::Prepare(db,
                                      "INSERT INTO request_ids "
                                      "(scope, request_id, resource_id) "
                                      "VALUES (?1, ?2, ?3) "
                                      "ON CONFLICT DO NOTHING"));
  RETURN_IF_ERROR(stmt.Bind(1, scope));
  RETURN_IF_ERROR(stmt.Bind(2, request_id));
  RETURN_IF_ERROR(stmt.Bind(3, resource_id));
  return stmt.Run();
}

// Datasets, backbones and models share one table shape: id, create_seq,
// proto. `table` is always one of our constants, never user input.
struct ResourceTable {
  const char* table;  // SQL table name
  const char* kind;   // word for messages: "dataset"
  // Whether a row without a tenant is everyone's (backbones); elsewhere it
  // is stored as the default tenant's.
  bool shared_when_untenanted;
};
constexpr ResourceTable kDatasets{"datasets", "dataset", false};
constexpr ResourceTable kBackbones{"backbones", "backbone", true};
constexpr ResourceTable kModels{"models", "model", false};

std::string OwnerOf(absl::string_view tenant, bool shared_when_untenanted) {
  if (tenant.empty() && !shared_when_untenanted) return std::string(kDefaultTenant);
  return std::string(tenant);
}

// The SQL condition "the row is visible to tenant ?N": kEveryTenant sees
// all, a tenant its own rows and the shared ones ('').
std::string VisibleTo(int param) {
  return absl::StrFormat("(?%d = '%s' OR tenant = ?%d OR tenant = '')", param,
                         kEveryTenant, param);
}

// Inserts or replaces by id; the create_seq of an existing row is kept so
// that an update does not move it in listings.
absl::Status UpsertResource(sqlite3* db, const ResourceTable& t,
                            const std::string& id, const std::string& tenant,
                            const std::string& bytes) {
  ASSIGN_OR_RETURN(
      Statement update,
      Statement::Prepare(db, absl::StrCat("UPDATE ", t.table,
                                          " SET proto = ?2, tenant = ?3 "
                                          "WHERE id = ?1")));
  RETURN_IF_ERROR(update.Bind(1, id));
  RETURN_IF_ERROR(update.BindBlob(2, bytes));
  RETURN_IF_ERROR(update.Bind(3, tenant));
  RETURN_IF_ERROR(update.Run());
  if (sqlite3_changes(db) > 0) return absl::OkStatus();

  ASSIGN_OR_RETURN(int64_t seq, NextCounter(db, "create_seq"));
  ASSIGN_OR_RETURN(
      Statement insert,
      Statement::Prepare(db, absl::StrCat("INSERT INTO ", t.table,
                                          " (id, create_seq, proto, tenant) "
                                          "VALUES (?1, ?2, ?3, ?4)")));
  RETURN_IF_ERROR(insert.Bind(1, id));
  RETURN_IF_ERROR(insert.Bind(2, seq));
  RETURN_IF_ERROR(insert.BindBlob(3, bytes));
  RETURN_IF_ERROR(insert.Bind(4, tenant));
  return insert.Run();
}

// The row's owner and proto bytes, with the proto saying the same owner.
template <typename T>
std::pair<std::string, std::string> OwnedBytes(const ResourceTable& t,
                                               T proto) {
  std::string tenant = OwnerOf(proto.tenant(), t.shared_when_untenanted);
  proto.set_tenant(tenant);
  return {tenant, proto.SerializeAsString()};
}

template <typename T>
absl::Status PutResource(sqlite3* db, const ResourceTable& t, const T& proto,
                         const std::string& request_id) {
  if (proto.id().empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot store a ", t.kind, " without an id"));
  }
  // Named, not structured, bindings: clang's C++20 cannot capture those.
  const std::pair<std::string, std::string> owned = OwnedBytes(t, proto);
  const std::string& tenant = owned.first;
  const std::string& bytes = owned.second;
  return InTransaction(db, [&]() -> absl::Status {
    RETURN_IF_ERROR(UpsertResource(db, t, proto.id(), tenant, bytes));
    return RecordRequest(db, t.kind, tenant, request_id, proto.id());
  });
}

// UpsertResource of a proto inside the caller's transaction.
template <typename T>
absl::Status UpsertOwned(sqlite3* db, const ResourceTable& t, const T& proto) {
  if (proto.id().empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot store a ", t.kind, " without an id"));
  }
  const std::pair<std::string, std::string> owned = OwnedBytes(t, proto);
  return UpsertResource(db, t, proto.id(), owned.first, owned.second);
}

absl::Status InsertCheckpoint(sqlite3* db, const std::string& job_id,
                              const CheckpointInfo& checkpoint) {
  ASSIGN_OR_RETURN(Statement stmt,
                   Statement::Prepare(db,
                                      "INSERT INTO checkpoints "
                                      "(job_id, epoch, attempt, proto) "
                                      "VALUES (?1, ?2, ?3, ?4)"));
  RETURN_IF_ERROR(stmt.Bind(1, job_id));
  RETURN_IF_ERROR(stmt.Bind(2, int64_t{checkpoint.epoch()}));
  RETURN_IF_ERROR(stmt.Bind(3, int64_t{checkpoint.attempt()}));
  RETURN_IF_ERROR(stmt.BindBlob(4, checkpoint.SerializeAsString()));
  return stmt.Run();
}

// Another tenant's row is not found with the very message of a missing
// one: its existence is not told.
template <typename T>
absl::StatusOr<T> GetResource(sqlite3* db, const ResourceTable& t,
                              const std::string& id, absl::string_view tenant) {
  ASSIGN_OR_RETURN(
      Statement stmt,
      Statement::Prepare(db, absl::StrCat("SELECT proto, tenant FROM ", t.table,
                                          " WHERE id = ?1 AND ", VisibleTo(2))));
  RETURN_IF_ERROR(stmt.Bind(1, id));
  RETURN_IF_ERROR(stmt.Bind(2, tenant));
  ASSIGN_OR_RETURN(bool row, stmt.Step());
  if (!row) {
    return absl::NotFoundError(absl::StrCat(Quoted(t.kind, id), " not found"));
  }
  return ParseOwned<T>(stmt.Blob(0), stmt.Text(1), Quoted(t.kind, id));
}

template <typename T>
absl::StatusOr<Store::Page<T>> ListResources(sqlite3* db,
                                             const ResourceTable& t,
                                             int page_size,
                                             const std::string& page_token,
                                             absl::string_view tenant) {
  const int limit = ClampPageSize(page_size);
  int64_t after = 0;
  if (!page_token.empty()) {
    ASSIGN_OR_RETURN(after, DecodePageToken(page_token));
  }
  ASSIGN_OR_RETURN(
      Statement stmt,
      Statement::Prepare(
          db, absl::StrCat("SELECT id, create_seq, proto, tenant FROM ",
                           t.table, " WHERE create_seq > ?1 AND ", VisibleTo(3),
                           " ORDER BY create_seq ASC LIMIT ?2")));
  RETURN_IF_ERROR(stmt.Bind(1, after));
  RETURN_IF_ERROR(stmt.Bind(2, int64_t{limit} + 1));
  RETURN_IF_ERROR(stmt.Bind(3, tenant));
  return ReadPage<T>(stmt, limit, t.kind);
}

absl::StatusOr<bool> JobExists(sqlite3* db, const std::string& id) {
  ASSIGN_OR_RETURN(Statement stmt,
                   Statement::Prepare(db, "SELECT 1 FROM jobs WHERE id = ?1"));
  RETURN_IF_ERROR(stmt.Bind(1, id));
  return stmt.Step();
}

// Appends events of one job and returns their sequences, in order. The
// stored proto carries its own sequence, which is the row's AUTOINCREMENT
// key: known only after the insert, hence insert-then-update.
absl::StatusOr<std::vector<int64_t>> InsertEvents(
    sqlite3* db, const std::string& job_id,
    const std::vector<JobEvent>& events) {
  std::vector<int64_t> sequences;
  if (events.empty()) return sequences;
  ASSIGN_OR_RETURN(Statement insert,
                   Statement::Prepare(db,
                                      "INSERT INTO job_events (job_id, proto) "
                                      "VALUES (?1, x'')"));
  ASSIGN_OR_RETURN(Statement update,
                   Statement::Prepare(db,
                                      "UPDATE job_events SET proto = ?2 "
                                      "WHERE sequence = ?1"));
  RETURN_IF_ERROR(insert.Bind(1, job_id));
  for (const JobEvent& original : events) {
    RETURN_IF_ERROR(insert.Run());
    const int64_t sequence = sqlite3_last_insert_rowid(db);
    JobEvent event = original;
    event.set_job_id(job_id);
    event.set_sequence(sequence);
    RETURN_IF_ERROR(update.Bind(1, sequence));
    RETURN_IF_ERROR(update.BindBlob(2, event.SerializeAsString()));
    RETURN_IF_ERROR(update.Run());
    sequences.push_back(sequence);
  }
  return sequences;
}

void WriteBackSequences(const std::string& job_id,
                        const std::vector<int64_t>& sequences,
                        std::vector<JobEvent>* events) {
  for (size_t i = 0; i < sequences.size(); ++i) {
    (*events)[i].set_job_id(job_id);
    (*events)[i].set_sequence(sequences[i]);
  }
}

int64_t TimestampMicros(const google::protobuf::Timestamp& t) {
  return t.seconds() * 1000000 + t.nanos() / 1000;
}

absl::StatusOr<std::vector<Job>> CollectJobs(Statement& stmt) {
  std::vector<Job> jobs;
  while (true) {
    ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) break;
    ASSIGN_OR_RETURN(Job job, ParseOwned<Job>(stmt.Blob(1), stmt.Text(2),
                                              Quoted("job", stmt.Text(0))));
    jobs.push_back(std::move(job));
  }
  return jobs;
}

absl::Status ApplyMigrations(sqlite3* db, int* version) {
  RETURN_IF_ERROR(Exec(db,
                       "CREATE TABLE IF NOT EXISTS schema_migrations ("
                       "version INTEGER PRIMARY KEY, "
                       "applied_at INTEGER NOT NULL)"));
  {
    ASSIGN_OR_RETURN(Statement stmt,
                     Statement::Prepare(db,
                                        "SELECT COALESCE(MAX(version), 0) "
                                        "FROM schema_migrations"));
    ASSIGN_OR_RETURN(bool row, stmt.Step());
    *version = row ? static_cast<int>(stmt.Int64(0)) : 0;
  }
  if (*version > kLatestVersion) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "database schema version %d is newer than this server knows (%d); "
        "run a newer tlserve",
        *version, kLatestVersion));
  }
  for (int next = *version + 1; next <= kLatestVersion; ++next) {
    absl::Status status = InTransaction(db, [&]() -> absl::Status {
      RETURN_IF_ERROR(Exec(db, kMigrations[next - 1]));
      ASSIGN_OR_RETURN(Statement record,
                       Statement::Prepare(db,
                                          "INSERT INTO schema_migrations "
                                          "(version, applied_at) "
                                          "VALUES (?1, ?2)"));
      RETURN_IF_ERROR(record.Bind(1, int64_t{next}));
      RETURN_IF_ERROR(record.Bind(2, absl::ToUnixSeconds(absl::Now())));
      return record.Run();
    });
    if (!status.ok()) {
      return absl::Status(
          status.code(),
          absl::StrFormat("schema migration %d: %s", next, status.message()));
    }
    *version = next;
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Store>> Store::Open(const std::string& path) {
  sqlite3* db = nullptr;
  int rc = sqlite3_open_v2(path.c_str(), &db,
                           SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr);
  if (rc != SQLITE_OK) {
    absl::Status status =
        SqliteError(db, rc, absl::StrCat("open '", path, "'"));
    sqlite3_close(db);  // sqlite3_open_v2 allocates a handle even on failure
    return status;
  }
  // From here on the Store owns the handle and closes it on every path.
  std::unique_ptr<Store> store(new Store(db));
  sqlite3_extended_result_codes(db, 1);
  sqlite3_busy_timeout(db, kBusyTimeoutMs);

  {
    ASSIGN_OR_RETURN(Statement wal,
                     Statement::Prepare(db, "PRAGMA journal_mode=WAL"));
    ASSIGN_OR_RETURN(bool row, wal.Step());
    const std::string mode = row ? std::string(wal.Text(0)) : "";
    // An in-memory database (tests) reports "memory"; anything else that is
    // not WAL would silently lose the durability the header promises.
    if (mode != "wal" && mode != "memory") {
      return absl::FailedPreconditionError(absl::StrFormat(
          "sqlite: '%s' cannot use WAL journaling (got '%s'); put the data "
          "dir on a local file system",
          path, mode));
    }
  }
  RETURN_IF_ERROR(Exec(db, "PRAGMA synchronous=FULL"));
  RETURN_IF_ERROR(Exec(db, "PRAGMA foreign_keys=ON"));

  int version = 0;
  RETURN_IF_ERROR(ApplyMigrations(db, &version));
  store->schema_version_ = version;
  return store;
}

Store::Store(sqlite3* db) : db_(db) {}

Store::~Store() {
  // Every Statement is finalized when its scope ends, so close succeeds.
  sqlite3_close_v2(db_);
}

int Store::schema_version() const {
  absl::MutexLock lock(&mu_);
  return schema_version_;
}

absl::StatusOr<std::optional<std::string>> Store::LookupRequest(
    absl::string_view kind, absl::string_view tenant,
    const std::string& request_id) {
  const std::string scope = RequestScope(kind, tenant);
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(Statement stmt,
                   Statement::Prepare(db_,
                                      "SELECT resource_id FROM request_ids "
                                      "WHERE scope = ?1 AND request_id = ?2"));
  RETURN_IF_ERROR(stmt.Bind(1, scope));
  RETURN_IF_ERROR(stmt.Bind(2, request_id));
  ASSIGN_OR_RETURN(bool row, stmt.Step());
  if (!row) return std::optional<std::string>();
  return std::optional<std::string>(std::string(stmt.Text(0)));
}

// --- Datasets, backbones, models.

absl::Status Store::PutDataset(const Dataset& dataset,
                               const std::string& request_id) {
  absl::MutexLock lock(&mu_);
  return PutResource(db_, kDatasets, dataset, request_id);
}

absl::StatusOr<Dataset> Store::GetDataset(const std::string& id,
                                          absl::string_view tenant) {
  absl::MutexLock lock(&mu_);
  return GetResource<Dataset>(db_, kDatasets, id, tenant);
}

absl::StatusOr<Store::Page<Dataset>> Store::ListDatasets(
    int page_size, const std::string& page_token, absl::string_view tenant) {
  absl::MutexLock lock(&mu_);
  return ListResources<Dataset>(db_, kDatasets, page_size, page_token, tenant);
}

absl::Status Store::DeleteDataset(const std::string& id,
                                  absl::string_view tenant) {
  absl::MutexLock lock(&mu_);
  return InTransaction(db_, [&]() -> absl::Status {
    ASSIGN_OR_RETURN(
        Statement del,
        Statement::Prepare(db_, absl::StrCat("DELETE FROM datasets WHERE id = ?1 AND ",
                                             VisibleTo(2))));
    RETURN_IF_ERROR(del.Bind(1, id));
    RETURN_IF_ERROR(del.Bind(2, tenant));
    RETURN_IF_ERROR(del.Run());
    if (sqlite3_changes(db_) == 0) {
      return absl::NotFoundError(
          absl::StrCat(Quoted("dataset", id), " not found"));
    }
    // A retried upload must create the dataset again, not name a deleted one.
    ASSIGN_OR_RETURN(
        Statement forget,
        Statement::Prepare(db_,
                           "DELETE FROM request_ids WHERE "
                           "scope LIKE 'dataset/%' AND resource_id = ?1"));
    RETURN_IF_ERROR(forget.Bind(1, id));
    return forget.Run();
  });
}

absl::Status Store::PutDatasetWithIndex(const Dataset& dataset,
                                        const std::string& image_index,
                                        const std::string& request_id) {
  if (dataset.id().empty()) {
    return absl::InvalidArgumentError("cannot store a dataset without an id");
  }
  const std::pair<std::string, std::string> owned = OwnedBytes(kDatasets, dataset);
  const std::string& tenant = owned.first;
  const std::string& bytes = owned.second;
  absl::MutexLock lock(&mu_);
  return InTransaction(db_, [&]() -> absl::Status {
    RETURN_IF_ERROR(UpsertResource(db_, kDatasets, dataset.id(), tenant, bytes));
    ASSIGN_OR_RETURN(Statement put,
                     Statement::Prepare(db_,
                                        "INSERT OR REPLACE INTO "
                                        "dataset_image_index (dataset_id, data) "
                                        "VALUES (?1, ?2)"));
    RETURN_IF_ERROR(put.Bind(1, dataset.id()));
    RETURN_IF_ERROR(put.BindBlob(2, image_index));
    RETURN_IF_ERROR(put.Run());
    return RecordRequest(db_, kDatasets.kind, tenant, request_id, dataset.id());
  });
}

absl::StatusOr<std::optional<std::string>> Store::GetDatasetImageIndex(
    const std::string& dataset_id) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(Statement stmt,
                   Statement::Prepare(db_,
                                      "SELECT data FROM dataset_image_index "
                                      "WHERE dataset_id = ?1"));
  RETURN_IF_ERROR(stmt.Bind(1, dataset_id));
  ASSIGN_OR_RETURN(bool row, stmt.Step());
  if (!row) return std::optional<std::string>();
  return std::optional<std::string>(std::string(stmt.Blob(0)));
}

absl::Status Store::PutBackbone(const Backbone& backbone,
                                const std::string& request_id) {
  absl::MutexLock lock(&mu_);
  return PutResource(db_, kBackbones, backbone, request_id);
}

absl::StatusOr<Backbone> Store::GetBackbone(const std::string& id,
                                            absl::string_view tenant) {
  absl::MutexLock lock(&mu_);
  return GetResource<Backbone>(db_, kBackbones, id, tenant);
}

absl::StatusOr<Store::Page<Backbone>> Store::ListBackbones(
    int page_size, const std::string& page_token, absl::string_view tenant) {
  absl::MutexLock lock(&mu_);
  return ListResources<Backbone>(db_, kBackbones, page_size, page_token,
                                 tenant);
}

absl::Status Store::PutModel(const Model& model) {
  absl::MutexLock lock(&mu_);
  return PutResource(db_, kModels, model, /*request_id=*/"");
}

absl::StatusOr<Model> Store::GetModel(const std::string& id,
                                      absl::string_view tenant) {
  absl::MutexLock lock(&mu_);
  return GetResource<Model>(db_, kModels, id, tenant);
}

absl::StatusOr<Store::Page<Model>> Store::ListModels(
    int page_size, const std::string& page_token, absl::string_view tenant) {
  absl::MutexLock lock(&mu_);
  return ListResources<Model>(db_, kModels, page_size, page_token, tenant);
}

absl::Status Store::DeleteModel(const std::string& id,
                                absl::string_view tenant) {
  absl::MutexLock lock(&mu_);
  return InTransaction(db_, [&]() -> absl::Status {
    // Checked in the same transaction as the delete: a deploy cannot slip
    // in between.
    ASSIGN_OR_RETURN(Model model, GetResource<Model>(db_, kModels, id, tenant));
    if (!model.serving().undeployed()) {
      return absl::FailedPreconditionError(absl::StrCat(
          Quoted("model", id), " is deployed; undeploy it first"));
    }
    ASSIGN_OR_RETURN(Statement del,
                     Statement::Prepare(db_, "DELETE FROM models WHERE id = ?1"));
    RETURN_IF_ERROR(del.Bind(1, id));
    return del.Run();
  });
}

// --- Jobs.

absl::Status Store::DeleteJob(const std::string& id) {
  absl::MutexLock lock(&mu_);
  return InTransaction(db_, [&]() -> absl::Status {
    ASSIGN_OR_RETURN(bool exists, JobExists(db_, id));
    if (!exists) {
      return absl::NotFoundError(absl::StrCat(Quoted("job", id), " not found"));
    }
    // Children first (foreign keys); a retried CreateJob with the deleted
    // job's request id makes a new job rather than naming a deleted one.
    for (const char* sql : {"DELETE FROM checkpoints WHERE job_id = ?1",
                            "DELETE FROM job_events WHERE job_id = ?1",
                            "DELETE FROM request_ids WHERE scope LIKE 'job/%' "
                            "AND resource_id = ?1",
                            "DELETE FROM jobs WHERE id = ?1"}) {
      ASSIGN_OR_RETURN(Statement del, Statement::Prepare(db_, sql));
      RETURN_IF_ERROR(del.Bind(1, id));
      RETURN_IF_ERROR(del.Run());
    }
    return absl::OkStatus();
  });
}

absl::Status Store::PutJob(const Job& job, std::vector<JobEvent>* events,
                           bool enter_queue, const std::string& request_id) {
  return StoreJob(job, /*outputs=*/nullptr, events, enter_queue, request_id);
}

absl::Status Store::PutJobWithOutputs(const Job& job, const JobOutputs& outputs,
                                      std::vector<JobEvent>* events,
                                      bool enter_queue) {
  return StoreJob(job, &outputs, events, enter_queue, /*request_id=*/"");
}

absl::Status Store::StoreJob(const Job& job, const JobOutputs* outputs,
                             std::vector<JobEvent>* events, bool enter_queue,
                             const std::string& request_id) {
  if (job.id().empty()) {
    return absl::InvalidArgumentError("cannot store a job without an id");
  }
  Job owned = job;
  owned.set_tenant(OwnerOf(job.tenant(), /*shared_when_untenanted=*/false));
  const std::string& tenant = owned.tenant();
  const std::string bytes = owned.SerializeAsString();
  absl::MutexLock lock(&mu_);
  std::vector<int64_t> sequences;
  RETURN_IF_ERROR(InTransaction(db_, [&]() -> absl::Status {
    int64_t create_seq = 0;
    int64_t queue_seq = 0;
    {
      ASSIGN_OR_RETURN(Statement find,
                       Statement::Prepare(db_,
                                          "SELECT create_seq, queue_seq "
                                          "FROM jobs WHERE id = ?1"));
      RETURN_IF_ERROR(find.Bind(1, job.id()));
      ASSIGN_OR_RETURN(bool found, find.Step());
      if (found) {
        create_seq = find.Int64(0);
        queue_seq = find.Int64(1);
      }
    }
    if (create_seq == 0) {
      ASSIGN_OR_RETURN(create_seq, NextCounter(db_, "create_seq"));
    }
    // A new job always gets a place so that the queue order is total; an
    // existing one keeps its place unless it (re-)enters the queue.
    if (queue_seq == 0 || enter_queue) {
      ASSIGN_OR_RETURN(queue_seq, NextCounter(db_, "queue_seq"));
    }
    ASSIGN_OR_RETURN(
        Statement upsert,
        Statement::Prepare(
            db_,
            "INSERT INTO jobs (id, state, priority, attempt, queue_seq, "
            "create_seq, end_time_us, proto, tenant) "
            "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) "
            "ON CONFLICT (id) DO UPDATE SET state = excluded.state, "
            "priority = excluded.priority, attempt = excluded.attempt, "
            "queue_seq = excluded.queue_seq, "
            "end_time_us = excluded.end_time_us, proto = excluded.proto, "
            "tenant = excluded.tenant"));
    RETURN_IF_ERROR(upsert.Bind(1, job.id()));
    RETURN_IF_ERROR(upsert.Bind(2, int64_t{job.state()}));
    RETURN_IF_ERROR(upsert.Bind(3, int64_t{job.spec().priority()}));
    RETURN_IF_ERROR(upsert.Bind(4, int64_t{job.attempt()}));
    RETURN_IF_ERROR(upsert.Bind(5, queue_seq));
    RETURN_IF_ERROR(upsert.Bind(6, create_seq));
    if (job.has_end_time()) {
      RETURN_IF_ERROR(upsert.Bind(7, TimestampMicros(job.end_time())));
    } else {
      RETURN_IF_ERROR(upsert.BindNull(7));
    }
    RETURN_IF_ERROR(upsert.BindBlob(8, bytes));
    RETURN_IF_ERROR(upsert.Bind(9, tenant));
    RETURN_IF_ERROR(upsert.Run());
    if (events != nullptr) {
      ASSIGN_OR_RETURN(sequences, InsertEvents(db_, job.id(), *events));
    }
    if (outputs != nullptr) {
      for (const CheckpointInfo& checkpoint : outputs->checkpoints) {
        RETURN_IF_ERROR(InsertCheckpoint(db_, job.id(), checkpoint));
      }
      for (const Backbone& backbone : outputs->backbones) {
        RETURN_IF_ERROR(UpsertOwned(db_, kBackbones, backbone));
      }
      if (outputs->model.has_value()) {
        RETURN_IF_ERROR(UpsertOwned(db_, kModels, *outputs->model));
      }
    }
    return RecordRequest(db_, "job", tenant, request_id, job.id());
  }));
  // Only after the commit: a failed call leaves the caller's events as they
  // were.
  if (events != nullptr) WriteBackSequences(job.id(), sequences, events);
  return absl::OkStatus();
}

absl::StatusOr<Job> Store::GetJob(const std::string& id,
                                  absl::string_view tenant) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(
      Statement stmt,
      Statement::Prepare(db_, absl::StrCat("SELECT proto, tenant FROM jobs "
                                           "WHERE id = ?1 AND ",
                                           VisibleTo(2))));
  RETURN_IF_ERROR(stmt.Bind(1, id));
  RETURN_IF_ERROR(stmt.Bind(2, tenant));
  ASSIGN_OR_RETURN(bool row, stmt.Step());
  if (!row)
    return absl::NotFoundError(absl::StrCat(Quoted("job", id), " not found"));
  return ParseOwned<Job>(stmt.Blob(0), stmt.Text(1), Quoted("job", id));
}

absl::StatusOr<Store::Page<Job>> Store::ListJobs(
    JobState state, int page_size, const std::string& page_token,
    absl::string_view tenant) {
  absl::MutexLock lock(&mu_);
  const int limit = ClampPageSize(page_size);
  int64_t before = std::numeric_limits<int64_t>::max();
  if (!page_token.empty()) {
    ASSIGN_OR_RETURN(before, DecodePageToken(page_token));
  }
  ASSIGN_OR_RETURN(
      Statement stmt,
      Statement::Prepare(db_,
                         absl::StrCat("SELECT id, create_seq, proto, tenant "
                                      "FROM jobs WHERE (?1 = 0 OR state = ?1) "
                                      "AND create_seq < ?2 AND ",
                                      VisibleTo(4),
                                      " ORDER BY create_seq DESC LIMIT ?3")));
  RETURN_IF_ERROR(stmt.Bind(1, int64_t{state}));
  RETURN_IF_ERROR(stmt.Bind(2, before));
  RETURN_IF_ERROR(stmt.Bind(3, int64_t{limit} + 1));
  RETURN_IF_ERROR(stmt.Bind(4, tenant));
  return ReadPage<Job>(stmt, limit, "job");
}

absl::StatusOr<std::vector<Job>> Store::QueuedJobs(int limit) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(
      Statement stmt,
      Statement::Prepare(db_,
                         "SELECT id, proto, tenant FROM jobs WHERE state = ?1 "
                         "ORDER BY priority DESC, queue_seq ASC LIMIT ?2"));
  RETURN_IF_ERROR(stmt.Bind(1, int64_t{tlserve::v1::QUEUED}));
  RETURN_IF_ERROR(stmt.Bind(2, int64_t{limit > 0 ? limit : -1}));
  return CollectJobs(stmt);
}

absl::StatusOr<int64_t> Store::QueuePosition(const std::string& id) {
  absl::MutexLock lock(&mu_);
  // Counts over the queue-order index; no job is read or parsed.
  ASSIGN_OR_RETURN(
      Statement stmt,
      Statement::Prepare(
          db_,
          "SELECT COUNT(*) FROM jobs AS q, jobs AS j "
          "WHERE j.id = ?1 AND j.state = ?2 AND q.state = ?2 AND "
          "(q.priority > j.priority OR "
          " (q.priority = j.priority AND q.queue_seq < j.queue_seq))"));
  RETURN_IF_ERROR(stmt.Bind(1, id));
  RETURN_IF_ERROR(stmt.Bind(2, int64_t{tlserve::v1::QUEUED}));
  ASSIGN_OR_RETURN(bool row, stmt.Step());
  if (!row) return absl::InternalError("COUNT returned no row");
  const int64_t ahead = stmt.Int64(0);
  if (ahead == 0) {
    // Zero jobs ahead, or the job is not queued at all: tell them apart.
    ASSIGN_OR_RETURN(
        Statement check,
        Statement::Prepare(db_, "SELECT 1 FROM jobs WHERE id = ?1 AND state = ?2"));
    RETURN_IF_ERROR(check.Bind(1, id));
    RETURN_IF_ERROR(check.Bind(2, int64_t{tlserve::v1::QUEUED}));
    ASSIGN_OR_RETURN(bool queued, check.Step());
    if (!queued) {
      return absl::NotFoundError(absl::StrCat(Quoted("job", id), " is not queued"));
    }
  }
  return ahead;
}

absl::StatusOr<std::vector<Job>> Store::JobsInState(JobState state) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(
      Statement stmt,
      Statement::Prepare(db_,
                         "SELECT id, proto, tenant FROM jobs WHERE state = ?1 "
                         "ORDER BY create_seq ASC"));
  RETURN_IF_ERROR(stmt.Bind(1, int64_t{state}));
  return CollectJobs(stmt);
}

absl::StatusOr<std::map<JobState, int64_t>> Store::CountJobsByState() {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(
      Statement stmt,
      Statement::Prepare(db_, "SELECT state, COUNT(*) FROM jobs GROUP BY state"));
  std::map<JobState, int64_t> counts;
  while (true) {
    ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) break;
    counts[static_cast<JobState>(stmt.Int64(0))] = stmt.Int64(1);
  }
  return counts;
}

absl::StatusOr<int64_t> Store::SizeOnDisk() {
  absl::MutexLock lock(&mu_);
  const char* path = sqlite3_db_filename(db_, "main");
  if (path == nullptr || *path == '\0') return int64_t{0};  // in-memory
  int64_t total = 0;
  // The WAL holds committed pages not yet checkpointed into the main file.
  for (const std::string& file : {std::string(path), std::string(path) + "-wal"}) {
    struct stat st;
    if (::stat(file.c_str(), &st) == 0) total += st.st_size;
  }
  return total;
}

absl::Status Store::AppendEvents(const std::string& job_id,
                                 std::vector<JobEvent>* events) {
  if (events == nullptr || events->empty()) return absl::OkStatus();
  absl::MutexLock lock(&mu_);
  std::vector<int64_t> sequences;
  RETURN_IF_ERROR(InTransaction(db_, [&]() -> absl::Status {
    ASSIGN_OR_RETURN(bool exists, JobExists(db_, job_id));
    if (!exists) {
      return absl::NotFoundError(
          absl::StrCat(Quoted("job", job_id), " not found"));
    }
    ASSIGN_OR_RETURN(sequences, InsertEvents(db_, job_id, *events));
    return absl::OkStatus();
  }));
  WriteBackSequences(job_id, sequences, events);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<JobEvent>> Store::ListEvents(
    const std::string& job_id, int64_t after_sequence, int limit) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(Statement stmt,
                   Statement::Prepare(db_,
                                      "SELECT sequence, proto FROM job_events "
                                      "WHERE job_id = ?1 AND sequence > ?2 "
                                      "ORDER BY sequence ASC LIMIT ?3"));
  RETURN_IF_ERROR(stmt.Bind(1, job_id));
  RETURN_IF_ERROR(stmt.Bind(2, after_sequence));
  RETURN_IF_ERROR(stmt.Bind(3, int64_t{ClampPageSize(limit)}));
  std::vector<JobEvent> events;
  while (true) {
    ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) break;
    ASSIGN_OR_RETURN(
        JobEvent event,
        ParseProto<JobEvent>(stmt.Blob(1),
                             absl::StrCat("event ", stmt.Int64(0), " of ",
                                          Quoted("job", job_id))));
    events.push_back(std::move(event));
  }
  return events;
}

absl::StatusOr<std::optional<double>> Store::MeanRunSeconds(int last_n) {
  if (last_n <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("MeanRunSeconds needs last_n > 0, got ", last_n));
  }
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(
      Statement stmt,
      Statement::Prepare(db_,
                         "SELECT id, proto FROM jobs "
                         "WHERE state = ?1 AND end_time_us IS NOT NULL "
                         "ORDER BY end_time_us DESC, create_seq DESC"));
  RETURN_IF_ERROR(stmt.Bind(1, int64_t{tlserve::v1::SUCCEEDED}));
  double total = 0;
  int count = 0;
  while (count < last_n) {
    ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) break;
    ASSIGN_OR_RETURN(
        Job job, ParseProto<Job>(stmt.Blob(1), Quoted("job", stmt.Text(0))));
    if (!job.has_start_time()) continue;  // never ran: nothing to measure
    total += static_cast<double>(TimestampMicros(job.end_time()) -
                                 TimestampMicros(job.start_time())) /
             1e6;
    ++count;
  }
  if (count == 0) return std::optional<double>();
  return std::optional<double>(total / count);
}

// --- Checkpoints.

absl::Status Store::AddCheckpoint(const std::string& job_id,
                                  const CheckpointInfo& checkpoint) {
  absl::MutexLock lock(&mu_);
  return InTransaction(db_, [&]() -> absl::Status {
    ASSIGN_OR_RETURN(bool exists, JobExists(db_, job_id));
    if (!exists) {
      return absl::NotFoundError(
          absl::StrCat(Quoted("job", job_id), " not found"));
    }
    return InsertCheckpoint(db_, job_id, checkpoint);
  });
}

absl::StatusOr<std::vector<CheckpointInfo>> Store::ListCheckpoints(
    const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(Statement stmt,
                   Statement::Prepare(db_,
                                      "SELECT seq, proto FROM checkpoints "
                                      "WHERE job_id = ?1 ORDER BY seq ASC"));
  RETURN_IF_ERROR(stmt.Bind(1, job_id));
  std::vector<CheckpointInfo> checkpoints;
  while (true) {
    ASSIGN_OR_RETURN(bool row, stmt.Step());
    if (!row) break;
    ASSIGN_OR_RETURN(
        CheckpointInfo checkpoint,
        ParseProto<CheckpointInfo>(
            stmt.Blob(1), absl::StrCat("checkpoint ", stmt.Int64(0), " of ",
                                       Quoted("job", job_id))));
    checkpoints.push_back(std::move(checkpoint));
  }
  return checkpoints;
}

absl::Status Store::PruneCheckpoints(const std::string& job_id,
                                     int keep_latest) {
  if (keep_latest < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("PruneCheckpoints keeps at least 1, got ", keep_latest));
  }
  absl::MutexLock lock(&mu_);
  return InTransaction(db_, [&]() -> absl::Status {
    ASSIGN_OR_RETURN(Statement stmt,
                     Statement::Prepare(db_,
                                        "SELECT seq, proto FROM checkpoints "
                                        "WHERE job_id = ?1 ORDER BY seq DESC"));
    RETURN_IF_ERROR(stmt.Bind(1, job_id));
    std::vector<int64_t> doomed;
    int kept = 0;
    bool kept_best = false;
    while (true) {
      ASSIGN_OR_RETURN(bool row, stmt.Step());
      if (!row) break;
      const int64_t seq = stmt.Int64(0);
      ASSIGN_OR_RETURN(CheckpointInfo checkpoint,
                       ParseProto<CheckpointInfo>(
                           stmt.Blob(1), absl::StrCat("checkpoint ", seq, " of ",
                                                      Quoted("job", job_id))));
      // Newest first: the latest `keep_latest`, and the newest one early
      // stopping marked best (the weights a user may want back).
      if (kept < keep_latest) {
        ++kept;
        kept_best |= checkpoint.best();
      } else if (checkpoint.best() && !kept_best) {
        kept_best = true;
      } else {
        doomed.push_back(seq);
      }
    }
    for (int64_t seq : doomed) {
      ASSIGN_OR_RETURN(
          Statement del,
          Statement::Prepare(db_, "DELETE FROM checkpoints WHERE seq = ?1"));
      RETURN_IF_ERROR(del.Bind(1, seq));
      RETURN_IF_ERROR(del.Run());
    }
    return absl::OkStatus();
  });
}

// --- Tenants.

absl::StatusOr<int64_t> Store::QueuedJobsOf(absl::string_view tenant) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(Statement stmt,
                   Statement::Prepare(db_,
                                      "SELECT COUNT(*) FROM jobs "
                                      "WHERE tenant = ?1 AND state = ?2"));
  RETURN_IF_ERROR(stmt.Bind(1, tenant));
  RETURN_IF_ERROR(stmt.Bind(2, int64_t{tlserve::v1::QUEUED}));
  ASSIGN_OR_RETURN(bool row, stmt.Step());
  return row ? stmt.Int64(0) : int64_t{0};
}

absl::StatusOr<int64_t> Store::StoredBytesOf(absl::string_view tenant) {
  absl::MutexLock lock(&mu_);
  int64_t total = 0;
  // Sizes live in the protos; a tenant's rows are found by index.
  auto sum = [&](const char* sql, auto size_of) -> absl::Status {
    ASSIGN_OR_RETURN(Statement stmt, Statement::Prepare(db_, sql));
    RETURN_IF_ERROR(stmt.Bind(1, tenant));
    while (true) {
      ASSIGN_OR_RETURN(bool row, stmt.Step());
      if (!row) return absl::OkStatus();
      ASSIGN_OR_RETURN(int64_t bytes, size_of(stmt));
      total += bytes;
    }
  };
  RETURN_IF_ERROR(sum("SELECT id, proto FROM datasets WHERE tenant = ?1",
                      [](Statement& stmt) -> absl::StatusOr<int64_t> {
    ASSIGN_OR_RETURN(Dataset d, ParseProto<Dataset>(stmt.Blob(1), Quoted("dataset", stmt.Text(0))));
    int64_t bytes = 0;
    for (const auto& part : d.parts()) bytes += part.size_bytes();
    return bytes;
  }));
  RETURN_IF_ERROR(sum("SELECT id, proto FROM models WHERE tenant = ?1",
                      [](Statement& stmt) -> absl::StatusOr<int64_t> {
    ASSIGN_OR_RETURN(Model m, ParseProto<Model>(stmt.Blob(1), Quoted("model", stmt.Text(0))));
    return m.size_bytes();
  }));
  RETURN_IF_ERROR(sum("SELECT id, proto FROM backbones WHERE tenant = ?1",
                      [](Statement& stmt) -> absl::StatusOr<int64_t> {
    ASSIGN_OR_RETURN(Backbone b, ParseProto<Backbone>(stmt.Blob(1), Quoted("backbone", stmt.Text(0))));
    return b.size_bytes();
  }));
  RETURN_IF_ERROR(sum("SELECT c.job_id, c.proto FROM checkpoints AS c "
                      "JOIN jobs AS j ON j.id = c.job_id WHERE j.tenant = ?1",
                      [](Statement& stmt) -> absl::StatusOr<int64_t> {
    ASSIGN_OR_RETURN(CheckpointInfo c, ParseProto<CheckpointInfo>(stmt.Blob(1), Quoted("checkpoint of job", stmt.Text(0))));
    return c.size_bytes();
  }));
  return total;
}

// --- Blob references.

absl::StatusOr<std::set<std::string>> Store::ReferencedBlobs() {
  // Under mu_ throughout: no write lands between the tables read.
  absl::MutexLock lock(&mu_);
  std::set<std::string> shas;
  auto each = [&](const char* sql, auto parse_and_add) -> absl::Status {
    ASSIGN_OR_RETURN(Statement stmt, Statement::Prepare(db_, sql));
    while (true) {
      ASSIGN_OR_RETURN(bool row, stmt.Step());
      if (!row) return absl::OkStatus();
      RETURN_IF_ERROR(parse_and_add(stmt));
    }
  };
  RETURN_IF_ERROR(each("SELECT id, proto FROM datasets", [&](Statement& stmt) -> absl::Status {
    ASSIGN_OR_RETURN(Dataset d, ParseProto<Dataset>(stmt.Blob(1), Quoted("dataset", stmt.Text(0))));
    for (const auto& part : d.parts()) shas.insert(part.sha256());
    return absl::OkStatus();
  }));
  RETURN_IF_ERROR(each("SELECT id, proto FROM backbones", [&](Statement& stmt) -> absl::Status {
    ASSIGN_OR_RETURN(Backbone b, ParseProto<Backbone>(stmt.Blob(1), Quoted("backbone", stmt.Text(0))));
    shas.insert(b.sha256());
    return absl::OkStatus();
  }));
  RETURN_IF_ERROR(each("SELECT id, proto FROM models", [&](Statement& stmt) -> absl::Status {
    ASSIGN_OR_RETURN(Model m, ParseProto<Model>(stmt.Blob(1), Quoted("model", stmt.Text(0))));
    shas.insert(m.sha256());
    return absl::OkStatus();
  }));
  RETURN_IF_ERROR(each("SELECT job_id, proto FROM checkpoints", [&](Statement& stmt) -> absl::Status {
    ASSIGN_OR_RETURN(CheckpointInfo c,
                     ParseProto<CheckpointInfo>(stmt.Blob(1), Quoted("checkpoint of job", stmt.Text(0))));
    shas.insert(c.sha256());
    return absl::OkStatus();
  }));
  shas.erase("");
  return shas;
}

}  // namespace tlserve
