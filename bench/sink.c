/* A counting JSON-lines sink for the zero-loss bench (docs/performance.md#zero-loss-throughput).
 *
 * `ecapture --eventaddr tcp://127.0.0.1:PORT` writes its events here instead of into a file, so a
 * step measures the capture pipeline without this machine's page cache (on these VMs a fresh
 * file takes ~0.4 GB/s, less than the JSON of 1 GB/s of payload). Nothing is stored: every line
 * is looked at once, in place, at memchr speed, because a slow sink would itself cause loss.
 *
 * Usage: sink PORT_FILE. Listens on an ephemeral port of 127.0.0.1, writes the port to
 * PORT_FILE, accepts one connection and reads it to EOF. Then prints one JSON object:
 * {"bytes": N, "lines": N, "data_by_pid": {"PID": N, ...}, "lost_records": N,
 *  "lost_by_reason": {"REASON": N, ...}}
 * A data line starts with {"type":"data" and has "pid":N near its start; a lost line starts
 * with {"type":"lost" and holds "reason":"..." and "records":N (the tool's JSON contract).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUFFER (8u << 20)
#define MAX_LINE_HEAD 512	/* where "pid" and the loss fields are looked for */
#define MAX_KEYS 64

struct counter {
	char key[48];
	uint64_t count;
};

static struct counter pids[MAX_KEYS], reasons[MAX_KEYS];
static uint64_t total_bytes, total_lines, lost_records;

static void die(const char *what)
{
	perror(what);
	exit(2);
}

static void add(struct counter *table, const char *key, size_t len, uint64_t count)
{
	if (len >= sizeof(table[0].key))
		len = sizeof(table[0].key) - 1;
	for (int i = 0; i < MAX_KEYS; i++) {
		if (!table[i].key[0]) {
			memcpy(table[i].key, key, len);
			table[i].key[len] = 0;
		}
		if (strlen(table[i].key) == len && !memcmp(table[i].key, key, len)) {
			table[i].count += count;
			return;
		}
	}
}

/* The value after "name": in the line's head: a number or a string's text. */
static const char *field(const char *head, size_t len, const char *name, size_t *value_len)
{
	size_t name_len = strlen(name);
	const char *found = memmem(head, len, name, name_len);
	const char *end = head + len, *value;

	if (!found)
		return NULL;
	value = found + name_len;
	if (value < end && *value == '"')
		value++;
	*value_len = 0;
	while (value + *value_len < end && value[*value_len] != '"' && value[*value_len] != ','
	       && value[*value_len] != '}')
		(*value_len)++;
	return value;
}

static void line(const char *start, size_t len)
{
	size_t head = len < MAX_LINE_HEAD ? len : MAX_LINE_HEAD, value_len;
	const char *value;

	total_lines++;
	if (len >= 14 && !memcmp(start, "{\"type\":\"data\"", 14)) {
		value = field(start, head, "\"pid\":", &value_len);
		if (value)
			add(pids, value, value_len, 1);
	} else if (len >= 14 && !memcmp(start, "{\"type\":\"lost\"", 14)) {
		uint64_t records = 0;
		value = field(start, len, "\"records\":", &value_len);
		if (value)
			records = strtoull(value, NULL, 10);
		lost_records += records;
		value = field(start, len, "\"reason\":", &value_len);
		if (value)
			add(reasons, value, value_len, records);
	}
}

static void print_table(const char *name, struct counter *table)
{
	printf("\"%s\": {", name);
	for (int i = 0; i < MAX_KEYS && table[i].key[0]; i++)
		printf("%s\"%s\": %llu", i ? ", " : "", table[i].key,
		       (unsigned long long)table[i].count);
	printf("}");
}

int main(int argc, char **argv)
{
	struct sockaddr_in address = { .sin_family = AF_INET };
	socklen_t address_len = sizeof(address);
	size_t held = 0;
	int skipping = 0;
	char *buffer;
	int listener, peer;
	FILE *port_file;

	if (argc != 2) {
		fprintf(stderr, "usage: sink PORT_FILE\n");
		return 2;
	}
	buffer = malloc(BUFFER);
	if (!buffer)
		die("malloc");
	listener = socket(AF_INET, SOCK_STREAM, 0);
	if (listener < 0)
		die("socket");
	address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(listener, (struct sockaddr *)&address, sizeof(address)) || listen(listener, 1))
		die("bind/listen");
	if (getsockname(listener, (struct sockaddr *)&address, &address_len))
		die("getsockname");
	port_file = fopen(argv[1], "w");
	if (!port_file)
		die("port file");
	fprintf(port_file, "%u\n", ntohs(address.sin_port));
	fclose(port_file);
	peer = accept(listener, NULL, NULL);
	if (peer < 0)
		die("accept");
	for (;;) {
		ssize_t got = read(peer, buffer + held, BUFFER - held);
		size_t done = 0;
		char *newline;

		if (got < 0)
			die("read");
		if (got == 0)
			break;
		total_bytes += got;
		held += got;
		while ((newline = memchr(buffer + done, '\n', held - done))) {
			if (skipping)	/* the tail of a line already counted */
				skipping = 0;
			else
				line(buffer + done, newline - (buffer + done));
			done = newline - buffer + 1;
		}
		if (done == 0 && held == BUFFER) {	/* a line longer than the buffer: counted */
			if (!skipping)		/* from its head, its tail skipped */
				line(buffer, held);
			skipping = 1;
			held = 0;
			continue;
		}
		memmove(buffer, buffer + done, held - done);
		held -= done;
	}
	if (held && !skipping)
		line(buffer, held);
	printf("{\"bytes\": %llu, \"lines\": %llu, ", (unsigned long long)total_bytes,
	       (unsigned long long)total_lines);
	print_table("data_by_pid", pids);
	printf(", \"lost_records\": %llu, ", (unsigned long long)lost_records);
	print_table("lost_by_reason", reasons);
	printf("}\n");
	return 0;
}
