// SPDX-License-Identifier: GPL-2.0
/*
 * Queries PostgreSQL backends run: ecapture postgres.
 *
 * pgstat_report_activity(BackendState state, const char *cmd_str) is
 * exported by the postgres binary and called by the backend's main loop
 * (src/backend/tcop/postgres.c): with STATE_RUNNING and the query text by
 * exec_simple_query (the simple protocol) and by exec_parse_message,
 * exec_bind_message and exec_execute_message (the extended protocol: Parse,
 * Bind, Execute each report the statement's text); with an idle state and
 * no text just before ReadyForQuery. So a query runs from its first
 * RUNNING report to the next idle one; the text is read from cmd_str, whole
 * (the server keeps only track_activity_query_size bytes of it).
 * The USDT probe query__start is not used: Debian's postgres 15 has it in
 * exec_simple_query only (readelf -n), so it misses the extended protocol.
 * An execution: PortalRun (exported), called by exec_simple_query per
 * statement and by exec_execute_message per Execute. Parse and Bind report
 * the text without running it, so in a pipeline (several executions of one
 * text before a Sync) the report after a run starts the next execution.
 * The error: AbortCurrentTransaction, which the backend's error recovery
 * calls when an ERROR reaches the top level (postgres.c, the sigsetjmp
 * block of PostgresMain), before the idle report.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "events.h"
#include "db.h"

char LICENSE[] SEC("license") = "GPL";

const struct db_query_chunk *unused_db_query_chunk __attribute__((unused));
const struct db_query_end *unused_db_query_end __attribute__((unused));

/* enum BackendState (src/include/utils/backend_status.h): the loader may
 * override them. */
const volatile __u32 state_idle = 1;
const volatile __u32 state_running = 2;
const volatile __u32 state_idle_in_transaction = 3;
const volatile __u32 state_idle_in_transaction_aborted = 5;

/* Backends with a query running (key: pid). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u8);
} busy SEC(".maps");

SEC("uprobe")
int report_activity(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 state = PT_REGS_PARM1(ctx), pid = pid_tgid >> 32;
	const char *text = (const char *)PT_REGS_PARM2(ctx);
	struct db_query_end *end;
	__u8 yes = 1;

	if (!wanted(pid_tgid))
		return 0;	/* filtered out by -p/-u */
	if (state == state_running) {
		if (!text)
			return 0;	/* no text to report */
		bpf_map_update_elem(&busy, &pid, &yes, BPF_ANY);
		submit_text(pid_tgid, text, false, 0, 0, 0);
		return 0;	/* the query runs until the backend goes idle */
	}
	if (state != state_idle && state != state_idle_in_transaction
	    && state != state_idle_in_transaction_aborted)
		return 0;	/* fast-path function calls, disabled tracking */
	if (!bpf_map_lookup_elem(&busy, &pid))
		return 0;	/* idle again with no query seen: nothing ends */
	bpf_map_delete_elem(&busy, &pid);
	end = end_record(pid_tgid);
	if (!end)
		return 0;	/* cannot happen: a one-slot per-CPU array */
	end->status = DB_STATUS_IDLE;
	return submit_end(end);
}

SEC("uprobe")
int abort_transaction(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 pid = pid_tgid >> 32;
	struct db_query_end *end;

	if (!bpf_map_lookup_elem(&busy, &pid))
		return 0;	/* no query of ours running (or filtered out) */
	end = end_record(pid_tgid);
	if (!end)
		return 0;	/* cannot happen: a one-slot per-CPU array */
	end->status = DB_STATUS_ERROR;
	return submit_end(end);
}

SEC("uprobe")
int portal_run(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 pid = pid_tgid >> 32;
	struct db_query_end *end;

	if (!bpf_map_lookup_elem(&busy, &pid))
		return 0;	/* no query of ours running (or filtered out) */
	end = end_record(pid_tgid);
	if (!end)
		return 0;	/* cannot happen: a one-slot per-CPU array */
	end->status = DB_STATUS_RUN;
	return submit_end(end);
}
