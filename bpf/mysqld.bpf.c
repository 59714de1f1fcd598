// SPDX-License-Identifier: GPL-2.0
/*
 * Statements a MariaDB/MySQL server dispatches: ecapture mysqld.
 *
 * dispatch_command runs one client command on the connection's thread, from
 * the packet to the response. Its entry gives the command and its text
 * (COM_QUERY, COM_STMT_PREPARE) or the statement id (COM_STMT_EXECUTE); its
 * return ends the query. Two signatures, told apart by the loader from the
 * mangled symbol:
 *   MariaDB:   dispatch_command(enum_server_command, THD *, char *packet,
 *              uint length, bool blocking)            (sql/sql_parse.cc)
 *   MySQL 5.7/8.0: dispatch_command(THD *, const COM_DATA *,
 *              enum_server_command), COM_DATA's com_query/com_stmt_prepare
 *              = { const char *query; unsigned int length; }, com_stmt_execute
 *              starts with the statement id              (include/mysql/com_data.h)
 * The error: the server's own error packet while a dispatch runs (MariaDB
 * Protocol::net_send_error_packet(THD *, errno, message, sqlstate)).
 * dispatch_command's bool is no signal: measured on MariaDB 10.11 with
 * bpftrace, it returns 0 for a failing SELECT and 1 for COM_QUIT (close).
 * The id a prepared statement gets: the prepare's OK packet (MariaDB
 * send_prep_stmt writes 12 bytes through my_net_write: 0x00, the id as 4
 * bytes little-endian, ...), so an execute is linked to its text by the id
 * the client was told, not by counting.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "events.h"
#include "db.h"

char LICENSE[] SEC("license") = "GPL";

const struct db_query_chunk *unused_db_query_chunk __attribute__((unused));
const struct db_query_end *unused_db_query_end __attribute__((unused));

#define SIGNATURE_MARIADB 1	/* (command, THD *, packet, length, ...) */
#define SIGNATURE_MYSQL 2	/* (THD *, const COM_DATA *, command) */
const volatile __u8 dispatch_signature = SIGNATURE_MARIADB;

/* attach cookies of the helper probes */
#define ERROR_MARIADB 1		/* Protocol::net_send_error_packet(this, THD *, errno, msg, state) */
#define ERROR_MYSQL 2		/* Protocol_classic::send_error(this, errno, msg, state) */
#define PREPARED_NET_WRITE 1	/* my_net_write(NET *, packet, length): the prepare's OK packet */
#define PREPARED_PS_STATUS 2	/* Protocol_classic::store_ps_status(this, stmt_id, ...) */

#define COM_QUERY 3
#define COM_STMT_PREPARE 22
#define COM_STMT_EXECUTE 23
#define PREPARE_OK_SIZE 12

/* The dispatch running on a thread, from entry to return. */
struct dispatch {
	__u64 thd;
	__u32 stmt_id;
	__u32 error_code;
	__u8 command;
	__u8 error;
	__u16 message_len;
	char sqlstate[8];
	char message[DB_MESSAGE_SIZE];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct dispatch);
} running SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dispatch);
} dispatch_scratch SEC(".maps");

SEC("uprobe")
int dispatch_enter(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 zero = 0, length = 0;
	struct dispatch *state;
	const char *text = NULL;
	__u64 arg1 = PT_REGS_PARM1(ctx), arg2 = PT_REGS_PARM2(ctx);
	__u64 arg3 = PT_REGS_PARM3(ctx), arg4 = PT_REGS_PARM4(ctx);
	__u64 thd, data;
	__u8 command;

	if (!wanted(pid_tgid))
		return 0;	/* filtered out by -p/-u */
	if (dispatch_signature == SIGNATURE_MYSQL) {
		thd = arg1;
		data = arg2;
		command = arg3;
	} else {
		command = arg1;
		thd = arg2;
		data = arg3;
		length = arg4;
	}
	if (command != COM_QUERY && command != COM_STMT_PREPARE && command != COM_STMT_EXECUTE)
		return 0;	/* ping, quit, change user...: not a statement */
	if (dispatch_signature == SIGNATURE_MYSQL) {
		if (command == COM_STMT_EXECUTE) {
			text = (const char *)data;	/* com_stmt_execute.stmt_id first */
			length = 4;
		} else if (bpf_probe_read_user(&text, sizeof(text), (void *)data)
			   || bpf_probe_read_user(&length, sizeof(length), (void *)(data + 8))) {
			stat_add(DB_STAT_READ_FAULTS, 1);
			return 0;	/* COM_DATA unreadable: counted */
		}
	} else {
		text = (const char *)data;
		if (command == COM_STMT_EXECUTE && length > 4)
			length = 4;	/* the statement id; the parameters are binary */
	}
	state = bpf_map_lookup_elem(&dispatch_scratch, &zero);
	if (!state)
		return 0;	/* cannot happen: a one-slot per-CPU array */
	state->thd = thd;
	state->stmt_id = 0;
	state->error_code = 0;
	state->command = command;
	state->error = 0;
	state->message_len = 0;
	__builtin_memset(state->sqlstate, 0, sizeof(state->sqlstate));
	bpf_map_update_elem(&running, &pid_tgid, state, BPF_ANY);
	/* An empty packet still makes a record: the query is seen. */
	submit_text(pid_tgid, text, true, length, thd, command);
	return 0;
}

SEC("uretprobe")
int dispatch_return(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct dispatch *state = bpf_map_lookup_elem(&running, &pid_tgid);
	struct db_query_end *end;

	if (!state)
		return 0;	/* not a statement, or entered before we attached */
	end = end_record(pid_tgid);
	if (end) {
		end->conn = state->thd;
		end->command = state->command;
		end->status = state->error ? DB_STATUS_ERROR : DB_STATUS_OK;
		end->error_code = state->error_code;
		end->stmt_id = state->stmt_id;
		end->message_len = state->message_len & (DB_MESSAGE_SIZE - 1);
		__builtin_memcpy(end->sqlstate, state->sqlstate, sizeof(end->sqlstate));
		bpf_probe_read_kernel(end->message, DB_MESSAGE_SIZE, state->message);
		submit_end(end);
	}
	bpf_map_delete_elem(&running, &pid_tgid);
	return 0;
}

SEC("uprobe")
int error_packet(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct dispatch *state = bpf_map_lookup_elem(&running, &pid_tgid);
	/* Every argument register read first: the compiler must not pick the
	 * context offset by a branch (the verifier refuses a moved ctx pointer). */
	__u64 arg2 = PT_REGS_PARM2(ctx), arg3 = PT_REGS_PARM3(ctx);
	__u64 arg4 = PT_REGS_PARM4(ctx), arg5 = PT_REGS_PARM5(ctx);
	const char *message, *sqlstate;
	long copied;

	if (!state || state->error)
		return 0;	/* no statement running here, or its first error is kept */
	if (bpf_get_attach_cookie(ctx) == ERROR_MYSQL) {
		state->error_code = arg2;
		message = (const char *)arg3;
		sqlstate = (const char *)arg4;
	} else {
		state->error_code = arg3;
		message = (const char *)arg4;
		sqlstate = (const char *)arg5;
	}
	state->error = 1;
	copied = message ? bpf_probe_read_user_str(state->message, DB_MESSAGE_SIZE, message) : 0;
	state->message_len = copied > 0 ? copied - 1 : 0;
	if (sqlstate && bpf_probe_read_user_str(state->sqlstate, 6, sqlstate) <= 0)
		state->sqlstate[0] = 0;
	return 0;
}

SEC("uprobe")
int prepared_id(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct dispatch *state = bpf_map_lookup_elem(&running, &pid_tgid);
	__u64 arg2 = PT_REGS_PARM2(ctx), arg3 = PT_REGS_PARM3(ctx);
	__u8 packet[5];

	if (!state || state->command != COM_STMT_PREPARE || state->stmt_id)
		return 0;	/* not in a prepare, or its id is known already */
	if (bpf_get_attach_cookie(ctx) == PREPARED_PS_STATUS) {
		state->stmt_id = arg2;
		return 0;	/* MySQL: the id is the argument */
	}
	if (arg3 != PREPARE_OK_SIZE)
		return 0;	/* not the prepare's OK packet */
	if (bpf_probe_read_user(packet, sizeof(packet), (void *)arg2)) {
		stat_add(DB_STAT_READ_FAULTS, 1);
		return 0;	/* unreadable: counted */
	}
	if (packet[0] != 0)
		return 0;	/* not an OK packet */
	state->stmt_id = packet[1] | packet[2] << 8 | packet[3] << 16 | (__u32)packet[4] << 24;
	return 0;	/* kept until dispatch_command returns */
}
