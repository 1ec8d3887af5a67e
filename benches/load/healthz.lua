-- The vault's own /healthz through the same TLS and HTTP stack.
function request() return wrk.format("GET", "/healthz") end
