// SPDX-License-Identifier: GPL-2.0
/*
 * Commands of interactive bash, and lines read through libreadline by other
 * programs (psql, sqlite3, gdb): ecapture bash.
 *
 * The line: an entry probe on readline_internal_teardown(eof), which
 * readline calls once a line is complete, with the line still in the global
 * rl_line_buffer. An entry probe, not a return probe on readline(): it also
 * sees the line of a shell that was already waiting at its prompt when the
 * probes were attached (a uretprobe only catches calls entered after it).
 * Globals are found from the probe's address: at a uprobe the IP is the
 * probed function's run-time address (kernel/events/uprobes.c, handle_swbp
 * sets it before calling the handlers), so IP - the function's ELF address is
 * the load bias of the file, and bias + a global's ELF address is the global.
 *
 * In libreadline.so the line comes from a return probe on readline()
 * instead: a program that uses rl_line_buffer itself (psql does, for tab
 * completion) gets its own copy of the variable by a copy relocation, and
 * the library's one stays NULL.
 *
 * Continuation lines: bash's current_command_line_count is 0 while the first
 * line of a command is read (eval.c parse_command resets it, parse.y
 * shell_getc counts each line after reading it).
 *
 * The status: the return value of the outermost execute_command. It nests
 * (execute_connection runs the left side of `a; b` through execute_command),
 * so a per-thread depth keeps only the outermost return.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "events.h"
#include "shell.h"

char LICENSE[] SEC("license") = "GPL";

/* Keep every record type in the object's BTF: the layout test reads it. */
const struct shell_line_event *unused_shell_line_event __attribute__((unused));
const struct shell_status_event *unused_shell_status_event __attribute__((unused));

/* Per hooked file (the attach cookie's low byte indexes them), ELF virtual
 * addresses written by the loader: readline_internal_teardown, the global
 * rl_line_buffer (char *), the global current_command_line_count (int; 0 =
 * the file has none, e.g. libreadline). */
const volatile __u64 teardown_vaddr[MAX_SHELL_TARGETS] = {};
const volatile __u64 line_buffer_vaddr[MAX_SHELL_TARGETS] = {};
const volatile __u64 line_count_vaddr[MAX_SHELL_TARGETS] = {};

/* Depth of execute_command calls, per thread. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u32);
} exec_depth SEC(".maps");

SEC("uprobe")
int readline_teardown(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u64 cookie = bpf_get_attach_cookie(ctx);
	__u32 index = cookie & 0xff;
	__u8 source = (cookie >> 8) & 0xff;
	__u64 bias, line_count_at;
	char *line = NULL;
	int count = 0;
	__u8 flags = 0;

	if (!wanted(pid_tgid))
		return 0;	/* filtered out by -p/-u */
	if (PT_REGS_PARM1(ctx))
		return 0;	/* eof: readline returns NULL, there is no line */
	if (index >= MAX_SHELL_TARGETS)
		return 0;	/* not a cookie the loader wrote */
	bias = PT_REGS_IP(ctx) - teardown_vaddr[index];
	if (bpf_probe_read_user(&line, sizeof(line), (void *)(bias + line_buffer_vaddr[index]))
	    || !line) {
		stat_add(SHELL_STAT_READ_FAULTS, 1);
		return 0;	/* rl_line_buffer unreadable: counted */
	}
	line_count_at = line_count_vaddr[index];
	if (line_count_at) {
		if (bpf_probe_read_user(&count, sizeof(count), (void *)(bias + line_count_at)))
			stat_add(SHELL_STAT_READ_FAULTS, 1);
		else
			flags |= LINE_FLAG_POSITION | (count > 0 ? LINE_FLAG_CONTINUATION : 0);
	}
	return submit_line(pid_tgid, line, source, flags);
}

SEC("uretprobe")
int readline_return(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	const char *line = (const char *)PT_REGS_RC(ctx);

	if (!wanted(pid_tgid))
		return 0;	/* filtered out by -p/-u */
	if (!line)
		return 0;	/* end of input: no line */
	return submit_line(pid_tgid, line, (bpf_get_attach_cookie(ctx) >> 8) & 0xff, 0);
}

SEC("uprobe")
int execute_command_enter(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 one = 1, *depth;

	if (!is_interactive(pid_tgid))
		return 0;	/* a script, or filtered out: its statuses are not wanted */
	depth = bpf_map_lookup_elem(&exec_depth, &pid_tgid);
	if (depth)
		*depth += 1;	/* one thread: no race */
	else
		bpf_map_update_elem(&exec_depth, &pid_tgid, &one, BPF_ANY);
	return 0;
}

SEC("uretprobe")
int execute_command_return(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 *depth = bpf_map_lookup_elem(&exec_depth, &pid_tgid);

	if (!depth)
		return 0;	/* entered before we attached, or a forked child's copy */
	if (*depth > 1) {
		*depth -= 1;
		return 0;	/* a nested call: the command is still running */
	}
	bpf_map_delete_elem(&exec_depth, &pid_tgid);
	return submit_status(pid_tgid, LINE_SOURCE_BASH, (__s32)PT_REGS_RC(ctx));
}
