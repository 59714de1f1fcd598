// SPDX-License-Identifier: GPL-2.0
/*
 * Commands of interactive zsh: ecapture zsh.
 *
 * zsh reads every interactive line through zleentry(ZLE_CMD_READ, lp, rp,
 * flags, context) (Src/input.c inputline), which returns the line; context
 * is ZLCON_LINE_START for a primary prompt and ZLCON_LINE_CONT for a
 * continuation (Src/zsh.h). The status: when zsh comes back to a primary
 * prompt, the global lastval is the status of the command just run (hooks
 * such as precmd restore it: Src/exec.c doshfunc with noreturnval). The
 * global's run-time address is the load bias (probe IP - zleentry's ELF
 * address, see bash.bpf.c) plus its ELF address.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "events.h"
#include "shell.h"

char LICENSE[] SEC("license") = "GPL";

const struct shell_line_event *unused_shell_line_event __attribute__((unused));
const struct shell_status_event *unused_shell_status_event __attribute__((unused));

#define ZLE_CMD_READ 1		/* Src/zsh.h enum, second value */
#define ZLCON_LINE_START 0
#define ZLCON_LINE_CONT 1

/* ELF virtual addresses written by the loader: zleentry, and the global
 * lastval (int; 0 = not found: no statuses). */
const volatile __u64 entry_vaddr = 0;
const volatile __u64 lastval_vaddr = 0;

/* A zleentry(ZLE_CMD_READ) in flight, per thread: the line's flags. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u8);
} reading SEC(".maps");

SEC("uprobe")
int zleentry_enter(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	int context = (int)PT_REGS_PARM5(ctx);
	__u8 flags = LINE_FLAG_POSITION;
	int lastval = 0;

	if ((int)PT_REGS_PARM1(ctx) != ZLE_CMD_READ)
		return 0;	/* another zle request (refresh, trash...): no line */
	if (!wanted(pid_tgid))
		return 0;	/* filtered out by -p/-u */
	if (context == ZLCON_LINE_CONT) {
		flags |= LINE_FLAG_CONTINUATION;
	} else if (context != ZLCON_LINE_START) {
		return 0;	/* a `select` or `vared` answer, not a command */
	} else if (lastval_vaddr && is_interactive(pid_tgid)) {
		__u64 bias = PT_REGS_IP(ctx) - entry_vaddr;

		if (bpf_probe_read_user(&lastval, sizeof(lastval), (void *)(bias + lastval_vaddr)))
			stat_add(SHELL_STAT_READ_FAULTS, 1);
		else
			submit_status(pid_tgid, LINE_SOURCE_ZSH, lastval);
	}
	bpf_map_update_elem(&reading, &pid_tgid, &flags, BPF_ANY);
	return 0;
}

SEC("uretprobe")
int zleentry_return(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u8 *pending = bpf_map_lookup_elem(&reading, &pid_tgid);
	const char *line = (const char *)PT_REGS_RC(ctx);
	__u8 flags;

	if (!pending)
		return 0;	/* not a line read, or entered before we attached */
	flags = *pending;
	bpf_map_delete_elem(&reading, &pid_tgid);
	if (!line)
		return 0;	/* end of input or an interrupted read: no line */
	return submit_line(pid_tgid, line, LINE_SOURCE_ZSH, flags);
}
