-- Look a subject up by ID number (blind index); the seeded subjects carry numbers 1..N.
package.path = os.getenv("PIIVAULT_BENCH_DIR") .. "/?.lua;" .. package.path
local c = require("common")
local count
function init(args) c.setup("PIIVAULT_BENCH_DSR_TOKEN", "dsr"); count = #c.load_ids() end
function request()
  local body = string.format('{"field":"id_number","value":"%s"}', c.id_number(math.random(count)))
  return wrk.format("POST", "/v1/subjects/lookup", nil, body)
end
