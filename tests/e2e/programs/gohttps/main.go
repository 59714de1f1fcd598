// A Go HTTPS server and client for the gotls e2e tests (standard library only).
//
//	gohttps server ADDR            serve on ADDR; prints "listening ADDR" when ready
//	gohttps client URL h1|h2 MARK  one POST of a body carrying MARK; prints the response
//
// The server answers /echo with a body carrying the request's marker,
// /big?n=N with N bytes of a known pattern, and /deep?n=N (HTTP/1.1) with N
// lines "deep-NNNN", each one tls.Conn.Write from a new goroutine whose stack
// is DEPTH frames deep: one of them makes Write's own prologue grow the stack
// (runtime.morestack restarts Write from its first instruction). With SSLKEYLOGFILE set, each side
// writes its own key log (tls.Config.KeyLogWriter) for the tests to compare.
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type fdKey struct{}

// The socket's fd (and the local address) behind a TLS connection: what the
// capture must report for it.
func socketFd(conn net.Conn) int {
	tlsConn, ok := conn.(*tls.Conn)
	if !ok {
		return -1
	}
	raw, err := tlsConn.NetConn().(syscall.Conn).SyscallConn()
	if err != nil {
		return -1
	}
	fd := -1
	raw.Control(func(s uintptr) { fd = int(s) })
	return fd
}

func keyLog() io.Writer {
	path := os.Getenv("SSLKEYLOGFILE")
	if path == "" {
		return nil
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		panic(err)
	}
	return f
}

func certificate() tls.Certificate {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	template := x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "localhost"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, &template, &template, &key.PublicKey, key)
	if err != nil {
		panic(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// Pattern is byte i of a /big body: every offset tells where it is.
func pattern(n int) []byte {
	body := make([]byte, n)
	for i := range body {
		body[i] = "0123456789abcdefghijklmnopqrstuvwxyz"[(i/7)%36]
	}
	return body
}

func serve(addr string) {
	mux := http.NewServeMux()
	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Reply-Marker", r.Header.Get("X-Marker"))
		fmt.Fprintf(w, "reply-%s got %d bytes from %s fd %d", r.Header.Get("X-Marker"),
			len(body), r.RemoteAddr, r.Context().Value(fdKey{}))
	})
	mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		w.Header().Set("Content-Length", strconv.Itoa(n))
		w.Write(pattern(n))
	})
	mux.HandleFunc("/deep", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		conn, _, err := w.(http.Hijacker).Hijack()
		if err != nil {
			panic(err)
		}
		defer conn.Close()
		fmt.Fprintf(conn, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n", n*10)
		for depth := 0; depth < n; depth++ {
			done := make(chan struct{})
			go func(depth int) {
				deepWrite(conn, depth, []byte(fmt.Sprintf("deep-%04d\n", depth)))
				close(done)
			}(depth)
			<-done
		}
	})
	listener, err := net.Listen("tcp", addr)
	if err != nil {
		panic(err)
	}
	server := &http.Server{Handler: mux, ConnContext: func(ctx context.Context, c net.Conn) context.Context {
		return context.WithValue(ctx, fdKey{}, socketFd(c))
	}, TLSConfig: &tls.Config{
		Certificates: []tls.Certificate{certificate()},
		NextProtos:   []string{"h2", "http/1.1"},
		KeyLogWriter: keyLog(),
	}}
	fmt.Printf("listening %s\n", listener.Addr())
	os.Stdout.Sync()
	panic(server.ServeTLS(listener, "", ""))
}

// deepWrite writes line from `depth` frames of 40 bytes of locals below here.
//
//go:noinline
func deepWrite(conn net.Conn, depth int, line []byte) int {
	var pad [40]byte
	if depth == 0 {
		conn.Write(line)
		return 0
	}
	pad[depth%40] = byte(depth)
	return deepWrite(conn, depth-1, line) + int(pad[(depth+1)%40])
}

func client(url, proto, marker string) {
	config := &tls.Config{InsecureSkipVerify: true, KeyLogWriter: keyLog()}
	transport := &http.Transport{TLSClientConfig: config, ForceAttemptHTTP2: proto == "h2"}
	if proto == "h1" {
		transport.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	c := &http.Client{Transport: transport, Timeout: 20 * time.Second}
	request, err := http.NewRequest("POST", url, strings.NewReader("request-body-"+marker))
	if err != nil {
		panic(err)
	}
	request.Header.Set("X-Marker", marker)
	trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		fmt.Printf("conn fd %d local %s\n", socketFd(info.Conn), info.Conn.LocalAddr())
	}}
	request = request.WithContext(httptrace.WithClientTrace(request.Context(), trace))
	response, err := c.Do(request)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	body, _ := io.ReadAll(response.Body)
	response.Body.Close()
	sum := sha256.Sum256(body)
	fmt.Printf("%s %d %s %s\n", response.Proto, len(body), hex.EncodeToString(sum[:]),
		string(body[:min(len(body), 200)]))
}

func min(a, b int) int {
	if a < b {
		return a
	}
	return b
}

func main() {
	switch os.Args[1] {
	case "server":
		serve(os.Args[2])
	case "client":
		client(os.Args[2], os.Args[3], os.Args[4])
	default:
		fmt.Fprintln(os.Stderr, "usage: gohttps server ADDR | client URL h1|h2 MARKER")
		os.Exit(2)
	}
}
