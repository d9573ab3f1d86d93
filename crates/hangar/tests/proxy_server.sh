mkdir -p /www/cgi-bin && cat > /www/cgi-bin/id <<'EOF'
#!/bin/sh
me=$(hostname)
echo "Content-Type: text/plain"
case "$QUERY_STRING" in
  replay=*) t=${QUERY_STRING#replay=}; [ "$t" != "$me" ] && echo "fly-replay: instance=$t;state=from-first";;
  mcp) echo "Mcp-Session-Id: session-$me";;
esac
echo
echo "$me $HTTP_FLY_REPLAY_SRC"
EOF
cat > /www/cgi-bin/events <<'EOF'
#!/bin/sh
# Server-sent events: one now, the next only once /tmp/go exists, so a client sees
# the first before the stream ends only if nothing on the way buffers.
echo "Content-Type: text/event-stream"
echo
echo "data: first"
echo
while [ ! -e /tmp/go ]; do sleep 0.1; done
echo "data: second"
echo
EOF
chmod +x /www/cgi-bin/id /www/cgi-bin/events && exec httpd -f -p 127.0.0.1:8080 -h /www