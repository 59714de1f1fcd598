/* Paced HTTP/1.1-over-TLS client for the fixed-rate bench (Debian has no wrk2).
 *
 * Request i is scheduled at start + i/RATE; it goes out on the first idle keep-alive connection
 * and its latency is measured from its *scheduled* time, so queueing behind a slow server counts
 * (no coordinated omission, as in wrk2). One thread, CONNS non-blocking connections, ppoll.
 * Usage: paced HOST PORT RATE SECONDS CONNS
 * Prints {"requests","seconds","p50_us","p99_us","errors","behind"}.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS 256
#define BUFFER 8192

struct connection {
	SSL *ssl;
	int fd;
	int busy;
	double scheduled;
	char buffer[BUFFER];
	size_t filled;
};

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
	fprintf(stderr, "paced: %s\n", what);
	ERR_print_errors_fp(stderr);
	exit(2);
}

static int compare(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

/* A complete response: head + Content-Length bytes of body. Returns its size or 0. */
static size_t complete_response(const char *data, size_t filled)
{
	const char *end = memmem(data, filled, "\r\n\r\n", 4);
	if (!end)
		return 0;
	size_t head = (size_t)(end - data) + 4;
	const char *length = memmem(data, head, "Content-Length: ", 16);
	size_t body = length ? strtoul(length + 16, NULL, 10) : 0;
	return filled >= head + body ? head + body : 0;
}

int main(int argc, char **argv)
{
	if (argc != 6)
		die("usage: paced HOST PORT RATE SECONDS CONNS");
	const char *host = argv[1];
	int port = atoi(argv[2]);
	double rate = strtod(argv[3], NULL), seconds = strtod(argv[4], NULL);
	int conns = atoi(argv[5]);
	if (conns < 1 || conns > MAX_CONNS || rate <= 0 || seconds <= 0)
		die("bad arguments");

	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	static struct connection connection[MAX_CONNS];
	struct pollfd polls[MAX_CONNS];
	for (int c = 0; c < conns; c++) {
		struct sockaddr_in address = { .sin_family = AF_INET, .sin_port = htons(port) };
		inet_pton(AF_INET, host, &address.sin_addr);
		int fd = socket(AF_INET, SOCK_STREAM, 0);
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
		if (connect(fd, (struct sockaddr *)&address, sizeof address) != 0)
			die("connect failed");
		SSL *ssl = SSL_new(ctx);
		SSL_set_fd(ssl, fd);
		if (SSL_connect(ssl) != 1)
			die("SSL_connect failed");
		fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
		connection[c] = (struct connection){ .ssl = ssl, .fd = fd };
		polls[c] = (struct pollfd){ .fd = fd, .events = POLLIN };
	}

	static const char request[] = "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
	size_t capacity = (size_t)(rate * seconds) + 16;
	double *latency = malloc(capacity * sizeof *latency);
	uint64_t next = 0, done = 0, errors = 0;
	double max_behind = 0;
	const double start = now_s();
	const double stop_sending = start + seconds, give_up = stop_sending + 2.0;
	for (;;) {
		double now = now_s();
		int outstanding = 0;
		for (int c = 0; c < conns; c++)
			outstanding += connection[c].busy;
		if (now >= give_up || (now >= stop_sending && outstanding == 0))
			break;
		/* Hand every due request to an idle connection. */
		for (int c = 0; c < conns && now < stop_sending; c++) {
			double due = start + (double)next / rate;
			if (due > now)
				break;
			if (connection[c].busy)
				continue;
			if (now - due > max_behind)
				max_behind = now - due;
			int sent;
			while ((sent = SSL_write(connection[c].ssl, request, sizeof request - 1)) <= 0) {
				int why = SSL_get_error(connection[c].ssl, sent);
				if (why != SSL_ERROR_WANT_WRITE && why != SSL_ERROR_WANT_READ)
					die("SSL_write failed");
			}
			connection[c].busy = 1;
			connection[c].scheduled = due;
			next++;
		}
		double wake = start + (double)next / rate - now_s();
		if (wake < 0 || now >= stop_sending)
			wake = now >= stop_sending ? 0.001 : 0;
		struct timespec timeout = { (time_t)wake, (long)((wake - (time_t)wake) * 1e9) };
		if (ppoll(polls, (nfds_t)conns, &timeout, NULL) < 0 && errno != EINTR)
			die("ppoll failed");
		for (int c = 0; c < conns; c++) {
			struct connection *conn = &connection[c];
			if (!(polls[c].revents & POLLIN) && SSL_pending(conn->ssl) == 0)
				continue;
			for (;;) {
				int got = SSL_read(conn->ssl, conn->buffer + conn->filled,
						   (int)(BUFFER - conn->filled));
				if (got <= 0) {
					int why = SSL_get_error(conn->ssl, got);
					if (why != SSL_ERROR_WANT_READ && why != SSL_ERROR_WANT_WRITE)
						die("connection closed by server");
					break;
				}
				conn->filled += (size_t)got;
				size_t size;
				while ((size = complete_response(conn->buffer, conn->filled)) > 0) {
					if (!conn->busy || memcmp(conn->buffer, "HTTP/1.1 200", 12) != 0)
						errors++;
					else if (done < capacity)
						latency[done++] = now_s() - conn->scheduled;
					conn->busy = 0;
					memmove(conn->buffer, conn->buffer + size, conn->filled - size);
					conn->filled -= size;
				}
				if (conn->filled == BUFFER)
					die("response larger than the buffer");
			}
		}
	}
	const double spent = now_s() - start;
	qsort(latency, done, sizeof *latency, compare);
	double p50 = done ? latency[done / 2] : 0, p99 = done ? latency[(done * 99) / 100] : 0;
	printf("{\"requests\": %llu, \"seconds\": %.6f, \"p50_us\": %.1f, \"p99_us\": %.1f, "
	       "\"errors\": %llu, \"behind_ms\": %.3f}\n",
	       (unsigned long long)done, spent, p50 * 1e6, p99 * 1e6,
	       (unsigned long long)errors, max_behind * 1e3);
	return 0;
}
