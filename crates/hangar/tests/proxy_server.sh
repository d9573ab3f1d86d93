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
chmod +x /www/cgi-bin/id && exec httpd -f -p 127.0.0.1:8080 -h /www