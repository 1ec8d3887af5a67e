-- Correct one field of a random seeded subject.
package.path = os.getenv("PIIVAULT_BENCH_DIR") .. "/?.lua;" .. package.path
local c = require("common")
local ids
function init(args) c.setup("PIIVAULT_BENCH_DSR_TOKEN", "dsr"); ids = c.load_ids() end
function request()
  local body = string.format('{"fields":{"phone":"137%08d"}}', math.random(99999999))
  return wrk.format("PATCH", "/v1/subjects/" .. ids[math.random(#ids)], nil, body)
end
